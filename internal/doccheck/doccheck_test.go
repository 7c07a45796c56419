package doccheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGuideLinks checks every relative link and anchor of the guide.
func TestGuideLinks(t *testing.T) {
	const root = "../.."
	pages := []string{"README.md", "SECURITY.md"}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs/*.md under %s (%v)", root, err)
	}
	for _, d := range docs {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, rel)
	}
	problems, err := Check(root, pages)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	t.Logf("checked %d pages", len(pages))
}

func TestSlug(t *testing.T) {
	for _, tc := range []struct{ heading, want string }{
		{"Two commands", "two-commands"},
		{"Debian 12's 6.1", "debian-12s-61"},
		{"Why a plain reuseport swap fails requests, and what removes each failure", "why-a-plain-reuseport-swap-fails-requests-and-what-removes-each-failure"},
		{"`handoffctl` and `fd_store_max`", "handoffctl-and-fd_store_max"},
		{"start → ready", "start--ready"},
		{"See [the SDK](sdk.md) *now*", "see-the-sdk-now"},
		{"Élan, naïve", "élan-naïve"},
		{"HTTP/2 over TLS", "http2-over-tls"},
	} {
		if got := Slug(tc.heading); got != tc.want {
			t.Errorf("Slug(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

// TestCheckFindsBrokenLinks makes sure the check can fail: a missing
// file, a missing anchor, an anchor on a source file and a link out of the
// repository are each reported, and what is fine (a repeated heading's
// numbered anchor, a line anchor, links in code) is not.
func TestCheckFindsBrokenLinks(t *testing.T) {
	root := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("main.go", "package main\n")
	write("docs/b.md", "# B\n\n## Setup\n\n## Setup\n\n<a name=\"custom\"></a>\n")
	write("README.md", strings.Join([]string{
		"# Title",
		"[ok](docs/b.md) [ok](docs/b.md#setup-1) [ok](docs/b.md#custom) [ok](#title) [ok](main.go#L1-L2)",
		"[ok](https://example.com/x.md#nowhere) [ok](docs/) `[code](nowhere.md)`",
		"```",
		"[fenced](nowhere.md)",
		"```",
		"[bad](docs/c.md)",
		"[bad](docs/b.md#setup-2)",
		"[bad](#nowhere)",
		"[bad](main.go#main)",
		"[bad](../outside.md)",
	}, "\n"))
	problems, err := Check(root, []string{"README.md"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.Target)
	}
	want := []string{"docs/c.md", "docs/b.md#setup-2", "#nowhere", "main.go#main", "../outside.md"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("problems %q, want %q:\n%v", got, want, problems)
	}
	for _, p := range problems {
		if p.Line < 7 {
			t.Errorf("%v: reported on line %d, before the bad links", p, p.Line)
		}
	}
}
