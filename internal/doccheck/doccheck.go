// Package doccheck checks the repository's Markdown guide: every relative
// link names a file that exists, and every #anchor a heading of its page,
// as GitHub makes anchors from headings. Its test runs it over README.md,
// SECURITY.md and docs/*.md in make test's unit stage, with no network: links
// with a scheme (https:, mailto:) are not followed. It is not a Markdown
// renderer: it reads ATX headings (# Title) and inline links ([text](target)),
// outside fenced code blocks and code spans, which is all the guide uses.
package doccheck

import (
	"bufio"
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

// Problem is one link that does not resolve.
type Problem struct {
	File   string // the page, relative to the root given to Check
	Line   int
	Target string // the link as written
	Reason string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s:%d: link %q: %s", p.File, p.Line, p.Target, p.Reason)
}

// Link is an inline link of a page.
type Link struct {
	Line   int
	Target string
}

// Page is what Check reads of a Markdown file: its links and the anchors
// of its headings.
type Page struct {
	Links   []Link
	Anchors map[string]bool
}

var (
	fence    = regexp.MustCompile("^\\s{0,3}(```|~~~)")
	heading  = regexp.MustCompile(`^\s{0,3}#{1,6}\s+(.*?)(\s+#+)?\s*$`)
	codeSpan = regexp.MustCompile("`+[^`]*`+")
	// An inline link or image: [text](target) or [text](target "title").
	inlineLink = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(\s+"[^"]*")?\s*\)`)
	// Text of a heading as GitHub renders it: links keep their text.
	linkText = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
	htmlTag  = regexp.MustCompile(`<[^>]+>`)
	htmlID   = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
)

// Parse reads a Markdown page's links and heading anchors.
func Parse(data []byte) Page {
	p := Page{Anchors: map[string]bool{}}
	seen := map[string]int{}
	inFence := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := fence.FindStringSubmatch(line); m != nil {
			switch {
			case inFence == "":
				inFence = m[1]
			case inFence == m[1]:
				inFence = ""
			}
			continue
		}
		if inFence != "" {
			continue
		}
		for _, m := range htmlID.FindAllStringSubmatch(line, -1) {
			p.Anchors[m[1]] = true
		}
		if m := heading.FindStringSubmatch(line); m != nil {
			slug := Slug(m[1])
			// GitHub numbers a repeated anchor: x, x-1, x-2.
			if k := seen[slug]; k > 0 {
				seen[slug]++
				slug = fmt.Sprintf("%s-%d", slug, k)
			} else {
				seen[slug] = 1
			}
			p.Anchors[slug] = true
		}
		for _, m := range inlineLink.FindAllStringSubmatch(codeSpan.ReplaceAllString(line, ""), -1) {
			p.Links = append(p.Links, Link{Line: n, Target: m[1]})
		}
	}
	return p
}

// Slug is the anchor GitHub gives a heading: its rendered text in lower
// case, with spaces made hyphens and everything but letters, digits,
// marks, hyphens and underscores dropped.
func Slug(text string) string {
	text = linkText.ReplaceAllString(text, "$1")
	text = htmlTag.ReplaceAllString(text, "")
	text = strings.NewReplacer("`", "", "*", "").Replace(text)
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(text)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Check reads each page (paths relative to root) and returns every link
// that names no file under root, or an anchor that no heading of its page
// makes.
func Check(root string, pages []string) ([]Problem, error) {
	parsed := map[string]Page{}
	read := func(rel string) (Page, error) {
		if p, ok := parsed[rel]; ok {
			return p, nil
		}
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return Page{}, err
		}
		p := Parse(data)
		parsed[rel] = p
		return p, nil
	}
	var problems []Problem
	for _, rel := range pages {
		page, err := read(rel)
		if err != nil {
			return nil, fmt.Errorf("read page: %w", err)
		}
		for _, l := range page.Links {
			if reason := checkLink(root, rel, l.Target, read); reason != "" {
				problems = append(problems, Problem{File: rel, Line: l.Line, Target: l.Target, Reason: reason})
			}
		}
	}
	return problems, nil
}

var scheme = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

// lineAnchor is GitHub's anchor of a line in a source file (#L10, #L10-L20).
var lineAnchor = regexp.MustCompile(`^L\d+(-L\d+)?$`)

// checkLink says what is wrong with a link of the page at rel, or "".
func checkLink(root, rel, target string, read func(string) (Page, error)) string {
	if scheme.MatchString(target) {
		return ""
	}
	path, anchor, _ := strings.Cut(target, "#")
	path, err := url.PathUnescape(path)
	if err != nil {
		return fmt.Sprintf("bad escape: %v", err)
	}
	dest := rel
	if path != "" {
		if strings.HasPrefix(path, "/") {
			dest = filepath.Clean(strings.TrimPrefix(path, "/"))
		} else {
			dest = filepath.Join(filepath.Dir(rel), path)
		}
		if dest == ".." || strings.HasPrefix(dest, "../") {
			return "points out of the repository"
		}
		if _, err := os.Stat(filepath.Join(root, dest)); err != nil {
			return fmt.Sprintf("no file %s", dest)
		}
	}
	if anchor == "" {
		return ""
	}
	if !strings.HasSuffix(dest, ".md") {
		if lineAnchor.MatchString(anchor) {
			return ""
		}
		return fmt.Sprintf("anchor #%s in %s, which is not a Markdown page", anchor, dest)
	}
	page, err := read(dest)
	if err != nil {
		return err.Error()
	}
	if !page.Anchors[anchor] {
		return fmt.Sprintf("no heading of %s has the anchor #%s", dest, anchor)
	}
	return ""
}
