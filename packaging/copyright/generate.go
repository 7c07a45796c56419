package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"
)

const formatURI = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"

// listedPackage is what `go list -deps -json` says of a package.
type listedPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
	Module     *listedModule
}

type listedModule struct {
	Path, Version, Dir string
	Main               bool
	Replace            *listedModule
}

// module is a module linked into one or more of the programs.
type module struct {
	path, version, dir string
	programs           []string
	packages           []listedPackage // its linked packages
}

// build is what the programs link, as go list sees it.
type build struct {
	programs  []string
	goVersion string
	goroot    string
	mainDir   string
	mainPkgs  []listedPackage
	stdUsers  []string
	modules   map[string]*module
}

// list runs go list in dir for each main package in pkgs.
func list(dir string, pkgs []string) (*build, error) {
	b := &build{modules: map[string]*module{}}
	for _, k := range []struct {
		name string
		dst  *string
	}{{"GOVERSION", &b.goVersion}, {"GOROOT", &b.goroot}} {
		out, err := goCmd(dir, "env", k.name)
		if err != nil {
			return nil, err
		}
		*k.dst = strings.TrimSpace(string(out))
	}
	for _, pkg := range pkgs {
		out, err := goCmd(dir, "list", "-deps", "-json=ImportPath,Dir,Standard,GoFiles,Module", pkg)
		if err != nil {
			return nil, err
		}
		prog := path.Base(strings.TrimSuffix(pkg, "/"))
		b.programs = append(b.programs, prog)
		if err := b.add(prog, out); err != nil {
			return nil, fmt.Errorf("go list -deps %s: %w", pkg, err)
		}
	}
	if b.mainDir == "" {
		return nil, fmt.Errorf("go list -deps %s: no package of the main module", strings.Join(pkgs, " "))
	}
	return b, nil
}

func (b *build) add(prog string, out []byte) error {
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		switch {
		case p.Standard:
			addOnce(&b.stdUsers, prog)
		case p.Module == nil:
			return fmt.Errorf("package %s belongs to no module", p.ImportPath)
		case p.Module.Main:
			b.mainDir = p.Module.Dir
			if !slices.ContainsFunc(b.mainPkgs, func(q listedPackage) bool { return q.ImportPath == p.ImportPath }) {
				b.mainPkgs = append(b.mainPkgs, p)
			}
		default:
			m := b.modules[p.Module.Path]
			if m == nil {
				m = &module{path: p.Module.Path, version: p.Module.Version, dir: p.Module.Dir}
				if r := p.Module.Replace; r != nil {
					m.dir = r.Dir
				}
				b.modules[m.path] = m
			}
			addOnce(&m.programs, prog)
			m.packages = append(m.packages, p)
		}
	}
}

func addOnce(list *[]string, s string) {
	if !slices.Contains(*list, s) {
		*list = append(*list, s)
	}
}

func goCmd(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// generate returns the copyright file of the programs built from the main
// packages pkgs, with go run in dir.
func generate(dir string, pkgs []string) (string, error) {
	b, err := list(dir, pkgs)
	if err != nil {
		return "", err
	}
	var doc strings.Builder
	fmt.Fprintf(&doc, "Format: %s\nUpstream-Name: handoffd\nComment:\n%s", formatURI, block(wrap(fmt.Sprintf(
		"%s are Go programs, linked statically: besides handoffd's own code they hold the Go standard library "+
			"and the Go modules below, each named by the directory `go mod vendor` would give it. "+
			"packaging/copyright generates this file from `go list -deps` and each module's licence files; "+
			"make deb checks it against the programs' build information.",
		strings.Join(b.programs, " and ")))))
	own, err := b.ownParagraphs()
	if err != nil {
		return "", err
	}
	for _, p := range own {
		doc.WriteString("\n" + p)
	}
	std, err := b.stdParagraph()
	if err != nil {
		return "", err
	}
	doc.WriteString("\n" + std)
	for _, k := range slices.Sorted(maps.Keys(b.modules)) {
		p, err := b.modules[k].paragraph()
		if err != nil {
			return "", fmt.Errorf("module %s %s: %w", k, b.modules[k].version, err)
		}
		doc.WriteString("\n" + p)
	}
	return doc.String(), nil
}

// ownParagraphs returns handoffd's paragraph (LICENSE, all files), then
// one per licence expression that files of its linked packages state
// with SPDX-License-Identifier.
func (b *build) ownParagraphs() ([]string, error) {
	lf, err := readLegal(b.mainDir)
	if err != nil {
		return nil, err
	}
	main := identify(lf.licences[0])
	if len(lf.licences) != 1 || len(main) != 1 {
		return nil, fmt.Errorf("%s: want one LICENSE file of one licence", b.mainDir)
	}
	field, err := licenceField(lf.licences)
	if err != nil {
		return nil, fmt.Errorf("LICENSE: %w", err)
	}
	owners := holders(lf.licences...)
	if len(owners) == 0 {
		return nil, fmt.Errorf("LICENSE: no copyright line")
	}
	paras := []string{fmt.Sprintf("Files: *\nCopyright: %s\nLicense: %s", strings.Join(owners, "\n "), field)}
	tagged, err := b.spdxFiles()
	if err != nil {
		return nil, err
	}
	for _, expr := range slices.Sorted(maps.Keys(tagged)) {
		p, err := spdxParagraph(expr, tagged[expr], owners, main[0], lf.licences[0])
		if err != nil {
			return nil, err
		}
		paras = append(paras, p)
	}
	return paras, nil
}

// spdxFiles returns the files of the main module's linked packages (any
// file of their directories, such as the C source of an embedded eBPF
// object) that carry an SPDX-License-Identifier, by its expression.
func (b *build) spdxFiles() (map[string][]string, error) {
	tagged := map[string][]string{}
	for _, p := range b.mainPkgs {
		entries, err := os.ReadDir(p.Dir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			file := filepath.Join(p.Dir, e.Name())
			expr, err := spdxOf(file)
			if err != nil {
				return nil, err
			}
			if expr == "" {
				continue
			}
			rel, err := filepath.Rel(b.mainDir, file)
			if err != nil {
				return nil, err
			}
			tagged[expr] = append(tagged[expr], filepath.ToSlash(rel))
		}
	}
	return tagged, nil
}

// spdxOf returns the SPDX-License-Identifier in the first lines of a text
// file, or "".
func spdxOf(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 2048)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if bytes.IndexByte(head, 0) >= 0 || !utf8.Valid(head[:max(0, n-4)]) {
		return "", nil // binary
	}
	sc := bufio.NewScanner(bytes.NewReader(head))
	for i := 0; i < 10 && sc.Scan(); i++ {
		if _, expr, ok := strings.Cut(sc.Text(), "SPDX-License-Identifier:"); ok {
			return strings.Trim(strings.TrimSpace(expr), "*/ "), nil
		}
	}
	return "", nil
}

// spdxParagraph is the paragraph of handoffd's files that state the SPDX
// expression expr. A licence of it that Debian does not ship must be
// handoffd's own (mainName, whose text is mainText).
func spdxParagraph(expr string, files, owners []string, mainName, mainText string) (string, error) {
	expr = strings.Trim(expr, "()")
	var names, texts, common []string
	for _, word := range strings.Fields(expr) {
		switch word {
		case "OR", "AND":
			names = append(names, strings.ToLower(word))
			continue
		}
		name, ok := spdx[strings.Trim(word, "()")]
		if !ok {
			return "", fmt.Errorf("%s: SPDX-License-Identifier %s: no Debian name for %s", files[0], expr, word)
		}
		names = append(names, name)
		switch {
		case commonText(name) != "":
			addOnce(&common, name)
		case name == mainName:
			addOnce(&texts, mainText)
		default:
			return "", fmt.Errorf("%s: %s is neither handoffd's licence nor one in /usr/share/common-licenses", files[0], name)
		}
	}
	slices.Sort(files)
	return fmt.Sprintf("Files: %s\nCopyright: %s\nLicense: %s\n%s", strings.Join(files, " "), strings.Join(owners, "\n "),
		strings.Join(names, " "), block(strings.Join(append(texts, pointers(common)...), "\n\n"))), nil
}

// stdParagraph is the paragraph of the Go standard library and runtime.
func (b *build) stdParagraph() (string, error) {
	lf, err := readLegal(b.goroot)
	if err != nil {
		return "", err
	}
	field, err := licenceField(lf.licences)
	if err != nil {
		return "", fmt.Errorf("%s: %w", b.goroot, err)
	}
	comment := fmt.Sprintf("The Go standard library and runtime of %s, linked into %s.", b.goVersion, strings.Join(b.stdUsers, " and "))
	return fmt.Sprintf("Files: GOROOT/src/*\nCopyright: %s\nLicense: %sComment:\n%s", strings.Join(holders(lf.licences...), "\n "),
		field, block(wrap(comment)+extras(lf))), nil
}

// paragraph is the module's paragraph; its Comment starts with the
// module's path and version, which -check reads.
func (m *module) paragraph() (string, error) {
	lf, err := readLegal(m.dir)
	if err != nil {
		return "", err
	}
	field, err := licenceField(lf.licences)
	if err != nil {
		return "", err
	}
	owners := holders(append(slices.Clone(lf.licences), lf.notice)...)
	if len(owners) == 0 {
		if owners, err = m.sourceHolders(); err != nil {
			return "", err
		}
	}
	comment := fmt.Sprintf("%s %s, a Go module linked into %s.", m.path, m.version, strings.Join(m.programs, " and "))
	return fmt.Sprintf("Files: vendor/%s/*\nCopyright: %s\nLicense: %sComment:\n%s", m.path, strings.Join(owners, "\n "),
		field, block(wrap(comment)+extras(lf))), nil
}

// sourceHolders returns the copyright statements in the heads of the
// module's linked Go files, for a module whose licence files name no one.
func (m *module) sourceHolders() ([]string, error) {
	var heads []string
	for _, p := range m.packages {
		for _, f := range p.GoFiles {
			data, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				return nil, err
			}
			heads = append(heads, firstLines(string(data), 20))
		}
	}
	owners := holders(heads...)
	if len(owners) == 0 {
		return nil, fmt.Errorf("no copyright line in its licence files, NOTICE or Go files")
	}
	slices.Sort(owners)
	return owners, nil
}

// extras returns the NOTICE and PATENTS texts to quote after a Comment.
func extras(lf legalFiles) string {
	var s string
	if lf.notice != "" {
		s += "\n\nIts NOTICE file:\n\n" + lf.notice
	}
	if lf.patents != "" {
		s += "\n\nIts PATENTS file:\n\n" + lf.patents
	}
	return s
}
