package config

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// parserKeys lists the Path of every key the parser accepts, from the yaml
// tags of the config structs.
func parserKeys() map[string]string {
	keys := map[string]string{}
	unmarshaler := reflect.TypeFor[yaml.Unmarshaler]()
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name) // yaml.v3's default
			}
			path := name
			if prefix != "" {
				path = prefix + "." + name
			}
			keys[path] = t.Name() + "." + f.Name
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshaler) {
				walk(ft, path)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// TestReferenceCoversParser fails when a key the parser accepts is not in
// the reference, or the reference has a key the parser does not accept.
func TestReferenceCoversParser(t *testing.T) {
	parser := parserKeys()
	documented := map[string]bool{}
	for _, sec := range Reference {
		for _, k := range sec.Keys {
			if documented[k.Path] {
				t.Errorf("%s: in the reference twice", k.Path)
			}
			documented[k.Path] = true
			if _, ok := parser[k.Path]; !ok {
				t.Errorf("%s: in the reference, but the parser accepts no such key: remove it from Reference in reference.go", k.Path)
			}
			if prefix := strings.TrimSuffix(k.Path, "."+k.Name()); sec.Prefix != "" && prefix != sec.Prefix || sec.Prefix == "" && k.Path != k.Name() {
				t.Errorf("%s: listed in section %q, whose keys are under %q", k.Path, sec.Title, sec.Prefix)
			}
			switch {
			case k.Type == "" || k.Doc == "" || k.Example == "":
				t.Errorf("%s: give its Type, Doc and Example", k.Path)
			case k.Reload.String() == "unknown":
				t.Errorf("%s: say what a reload does with it (Reload)", k.Path)
			case k.Required && (k.Default != "" || k.DefaultNote != ""):
				t.Errorf("%s: required, and with a default", k.Path)
			case !k.Required && k.Default == "" && k.DefaultNote == "":
				t.Errorf("%s: give its Default, or a DefaultNote, or mark it Required", k.Path)
			case !strings.HasSuffix(k.Doc, "."):
				t.Errorf("%s: Doc %q: end it with a full stop", k.Path, k.Doc)
			}
		}
	}
	for path, field := range parser {
		if !documented[path] {
			t.Errorf("%s (%s): the parser accepts it, but it is not in the reference: add a Key for it to Reference in internal/config/reference.go, then run make docs", path, field)
		}
	}
}

// baseConfig is a small valid config, with a health check so that the
// health keys have a place.
const baseConfig = `
services:
  - name: demo
    command: ["./bin/demo"]
    listeners:
      - name: http
        address: tcp://127.0.0.1:8080
      - name: admin
        address: tcp://127.0.0.1:8081
    health:
      http: /healthz
`

// withExample returns baseConfig with k set to its example, and the keys
// of k.ExampleWith beside it.
func withExample(t *testing.T, k Key) []byte {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(baseConfig), &doc); err != nil {
		t.Fatal(err)
	}
	var value any
	if err := yaml.Unmarshal([]byte(k.Example), &value); err != nil {
		t.Fatalf("%s: example %q is not YAML: %v", k.Path, k.Example, err)
	}
	parts := strings.Split(k.Path, ".")
	m := doc
	for _, p := range parts[:len(parts)-1] {
		next := m[p]
		if list, ok := next.([]any); ok {
			next = list[0]
		}
		var ok bool
		if m, ok = next.(map[string]any); !ok {
			t.Fatalf("%s: baseConfig has no %s to set it in", k.Path, p)
		}
	}
	if k.ExampleWith != "" {
		var with map[string]any
		if err := yaml.Unmarshal([]byte(k.ExampleWith), &with); err != nil {
			t.Fatalf("%s: ExampleWith %q is not a YAML map: %v", k.Path, k.ExampleWith, err)
		}
		maps.Copy(m, with)
	}
	m[parts[len(parts)-1]] = value
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReferenceExamples checks that the parser accepts each key's example
// and that a reload from baseConfig to it does what Reload says.
func TestReferenceExamples(t *testing.T) {
	base, err := ParseConfig([]byte(baseConfig))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig([]byte(WholeExample)); err != nil {
		t.Errorf("WholeExample: %v", err)
	}
	for _, sec := range Reference {
		for _, k := range sec.Keys {
			data := withExample(t, k)
			next, err := ParseConfig(data)
			if err != nil {
				t.Errorf("%s: example %q refused: %v\n%s", k.Path, k.Example, err, data)
				continue
			}
			_, err = Diff(base, next, nil)
			refused := k.Reload == ReloadRestart || k.Reload == ReloadReAdd
			if refused != (err != nil) {
				t.Errorf("%s: reload %q, but a reload to its example %q gives error %v", k.Path, k.Reload, k.Example, err)
			}
		}
	}
}

// TestReferenceDefaults checks each Default against what the parser fills
// in for a key left out.
func TestReferenceDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(baseConfig))
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{"services.name": true, "services.command": true, "services.listeners": true,
		"services.health": true, "services.health.http": true, "services": true,
		"services.listeners.name": true, "services.listeners.address": true}
	for _, sec := range Reference {
		for _, k := range sec.Keys {
			if set[k.Path] || k.Required {
				continue
			}
			v, ok := fieldAt(reflect.ValueOf(*cfg), strings.Split(k.Path, "."))
			if !ok {
				t.Errorf("%s: not found in the parsed config", k.Path)
				continue
			}
			got := yamlValue(v)
			switch {
			case k.DefaultNote != "" && k.Default == "":
				// Said in words: it depends on other keys (health.listener)
				// or is none at all.
				if v.Kind() == reflect.String && got != "" && k.Path != "services.health.listener" {
					t.Errorf("%s: DefaultNote %q, but the parser fills in %q: set Default", k.Path, k.DefaultNote, got)
				}
			case got != k.Default:
				t.Errorf("%s: Default %q, but the parser fills in %q", k.Path, k.Default, got)
			}
		}
	}
}

// fieldAt finds the field of the config value v at path, taking the first
// element of lists.
func fieldAt(v reflect.Value, path []string) (reflect.Value, bool) {
	for _, name := range path {
		for v.Kind() == reflect.Pointer || v.Kind() == reflect.Slice {
			switch {
			case v.Kind() == reflect.Pointer && v.IsNil(), v.Kind() == reflect.Slice && v.Len() == 0:
				return v, false
			case v.Kind() == reflect.Slice:
				v = v.Index(0)
			default:
				v = v.Elem()
			}
		}
		i := slices.IndexFunc(reflect.VisibleFields(v.Type()), func(f reflect.StructField) bool {
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			return tag == name
		})
		if i < 0 {
			return v, false
		}
		v = v.Field(i)
	}
	return v, true
}

// yamlValue writes a parsed value as the reference's Default does.
func yamlValue(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case Duration:
		return time.Duration(x).String()
	case Signal:
		for name, sig := range signalNames {
			if sig == syscall.Signal(x) {
				return name
			}
		}
		return fmt.Sprint(int(x))
	case *int:
		if x == nil {
			return ""
		}
		return strconv.Itoa(*x)
	case []string:
		return "[" + strings.Join(x, ", ") + "]"
	}
	return fmt.Sprint(v.Interface())
}

var update = flag.Bool("update", false, "rewrite the generated part of docs/configuration.md")

// Markers of the generated part of docs/configuration.md.
const (
	docPath  = "../../docs/configuration.md"
	docBegin = "<!-- The keys below are generated from internal/config/reference.go by make docs: edit that file, not this section. -->\n"
	docEnd   = "<!-- End of the generated keys. -->\n"
)

// TestConfigurationDoc checks that docs/configuration.md holds the
// reference as RenderMarkdown writes it; go test -update (make docs)
// rewrites it.
func TestConfigurationDoc(t *testing.T) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok1 := strings.Cut(string(doc), docBegin)
	old, after, ok2 := strings.Cut(rest, docEnd)
	if !ok1 || !ok2 {
		t.Fatalf("%s: no generated part between %q and %q", docPath, docBegin, docEnd)
	}
	var b bytes.Buffer
	if err := RenderMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	gen := "\n" + b.String() + "\n"
	if gen == old {
		return
	}
	if *update {
		if err := os.WriteFile(docPath, []byte(before+docBegin+gen+docEnd+after), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s differs from the reference in internal/config/reference.go: run make docs and commit", docPath)
}

// TestRenderMan checks that the man page names every key, and that no line
// of text starts with a character roff would take for a request.
func TestRenderMan(t *testing.T) {
	var b bytes.Buffer
	if err := RenderMan(&b, "1.2.3"); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{".TH HANDOFF.YAML 5 \"\" \"handoffd 1.2.3\"", ".SH NAME\nhandoff.yaml \\- ",
		".SH EXAMPLE\n.EX\ncontrol: ", ".SH SEE ALSO\n.BR handoffd (8),\n.BR handoffctl (8)\n"} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	for _, sec := range Reference {
		for _, k := range sec.Keys {
			if !strings.Contains(page, ".TP\n.B "+k.Name()+"\n") {
				t.Errorf("man page lacks key %s", k.Path)
			}
		}
	}
	requests := []string{".nh", ".TH", ".SH", ".TP", ".B", ".BR", ".I", ".PP", ".br", ".EX", ".EE"}
	for i, line := range strings.Split(page, "\n") {
		if (strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'")) &&
			!slices.Contains(requests, strings.Fields(line)[0]) {
			t.Errorf("line %d: %q would be read as a roff request", i+1, line)
		}
	}
}

func TestRoff(t *testing.T) {
	for in, want := range map[string]string{
		"plain text.":              "plain text.",
		"set `ready: notify` here": `set \fBready: notify\fR here`,
		"`--control` or `a\\b`":    `\fB\-\-control\fR or \fBa\eb\fR`,
		".starts with a dot":       `\&.starts with a dot`,
		"'quoted":                  `\&'quoted`,
	} {
		if got := roff(in); got != want {
			t.Errorf("roff(%q) = %q, want %q", in, got, want)
		}
	}
}
