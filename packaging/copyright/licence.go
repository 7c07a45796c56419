package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// A licence is one the generator can name from a phrase of its text.
type licence struct {
	// name is Debian's short name for it (DEP-5).
	name string
	// common is its text in /usr/share/common-licenses, when Debian ships
	// it there; the copyright file then points to it instead of copying it.
	common string
	// match reports whether a normalized licence text (lower case, one
	// space between words, no quoting marks) holds it.
	match func(text string) bool
}

var licences = []licence{
	{name: "Apache-2.0", common: "/usr/share/common-licenses/Apache-2.0", match: func(t string) bool {
		return strings.Contains(t, "apache license") && strings.Contains(t, "version 2.0")
	}},
	{name: "MPL-2.0", common: "/usr/share/common-licenses/MPL-2.0", match: func(t string) bool {
		return strings.Contains(t, "mozilla public license") && strings.Contains(t, "2.0")
	}},
	{name: "Expat", match: func(t string) bool {
		return strings.Contains(t, "permission is hereby granted, free of charge, to any person obtaining a copy")
	}},
	{name: "BSD-3-clause", match: func(t string) bool {
		return strings.Contains(t, "redistribution and use in source and binary forms") &&
			strings.Contains(t, "to endorse or promote products")
	}},
	{name: "BSD-2-clause", match: func(t string) bool {
		return strings.Contains(t, "redistribution and use in source and binary forms") &&
			!strings.Contains(t, "to endorse or promote products")
	}},
	{name: "ISC", match: func(t string) bool {
		return strings.Contains(t, "permission to use, copy, modify, and/or distribute this software for any purpose")
	}},
}

// spdx maps the SPDX identifiers of handoffd's own files to Debian's
// short names.
var spdx = map[string]string{
	"MIT": "Expat", "Apache-2.0": "Apache-2.0", "BSD-2-Clause": "BSD-2-clause", "BSD-3-Clause": "BSD-3-clause",
	"GPL-2.0-only": "GPL-2", "GPL-2.0-or-later": "GPL-2+", "LGPL-2.1-only": "LGPL-2.1", "LGPL-2.1-or-later": "LGPL-2.1+",
}

// commonLicences are the texts of /usr/share/common-licenses that spdx
// can name, besides those of licences.
var commonLicences = map[string]string{
	"GPL-2": "/usr/share/common-licenses/GPL-2", "GPL-2+": "/usr/share/common-licenses/GPL-2",
	"LGPL-2.1": "/usr/share/common-licenses/LGPL-2.1", "LGPL-2.1+": "/usr/share/common-licenses/LGPL-2.1",
}

func commonText(name string) string {
	for _, l := range licences {
		if l.name == name {
			return l.common
		}
	}
	return commonLicences[name]
}

var quoting = regexp.MustCompile(`(?m)^[ \t]*[>#]+`)

// identify names the licences a text holds, in the order of licences.
func identify(text string) []string {
	t := strings.ToLower(strings.Join(strings.Fields(quoting.ReplaceAllString(text, " ")), " "))
	var names []string
	for _, l := range licences {
		if l.match(t) {
			names = append(names, l.name)
		}
	}
	return names
}

// copyrightLine matches a line that states a copyright: "Copyright",
// optionally "(c)" or "©", then the years and holders. Prose about
// copyright ("copyright notice", "Copyright [yyyy] [name of copyright
// owner]") does not match.
var (
	copyrightLine = regexp.MustCompile(`^[\s>#*/]*Copyright\s*(?:\([cC]\)|©)?\s*(.+)$`)
	notAHolder    = regexp.MustCompile(`(?i)^(\[|notices?\b|holders?\b|owners?\b|and\b|law\b|statements?\b|licen[cs]e\b)`)
	rightsClaim   = regexp.MustCompile(`(?i)[,.]?\s*all rights reserved\.?\s*$`)
)

// holders returns the copyright statements of texts, years and holders
// without the word "Copyright", each once, in order.
func holders(texts ...string) []string {
	var out []string
	for _, text := range texts {
		for line := range strings.SplitSeq(text, "\n") {
			m := copyrightLine.FindStringSubmatch(line)
			if m == nil || notAHolder.MatchString(m[1]) {
				continue
			}
			h := strings.TrimSuffix(strings.TrimSpace(rightsClaim.ReplaceAllString(m[1], "")), ".")
			if h != "" && !slices.Contains(out, h) {
				out = append(out, h)
			}
		}
	}
	return out
}

// legalFiles are a module's files that say what may be done with it.
type legalFiles struct {
	licences []string // texts of LICENSE*, LICENCE*, COPYING*
	notice   string   // NOTICE (Apache-2.0 §4(d) asks that it travel with the binaries)
	patents  string   // PATENTS (the Go project's patent grant)
}

func readLegal(dir string) (legalFiles, error) {
	var lf legalFiles
	entries, err := os.ReadDir(dir)
	if err != nil {
		return lf, err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name := strings.ToUpper(e.Name())
		var dst *string
		switch {
		case hasAnyPrefix(name, "LICENSE", "LICENCE", "COPYING"):
			lf.licences = append(lf.licences, "")
			dst = &lf.licences[len(lf.licences)-1]
		case strings.HasPrefix(name, "NOTICE"):
			dst = &lf.notice
		case strings.HasPrefix(name, "PATENTS"):
			dst = &lf.patents
		default:
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return lf, err
		}
		*dst = strings.TrimSpace(string(data))
	}
	if len(lf.licences) == 0 {
		return lf, fmt.Errorf("no LICENSE, LICENCE or COPYING file in %s", dir)
	}
	return lf, nil
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// licenceField returns the License field of a paragraph over the given
// licence texts: the names joined by "and", then the texts of those that
// Debian does not ship, and for those it does, where they are.
func licenceField(texts []string) (string, error) {
	var names, body, common []string
	for _, text := range texts {
		found := identify(text)
		if len(found) == 0 {
			return "", fmt.Errorf("no licence it knows in:\n%s", firstLines(text, 5))
		}
		shipped := true
		for _, n := range found {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
			if c := commonText(n); c == "" {
				shipped = false
			} else if !slices.Contains(common, n) {
				common = append(common, n)
			}
		}
		if !shipped {
			body = append(body, text)
		}
	}
	return strings.Join(names, " and ") + "\n" + block(strings.Join(append(body, pointers(common)...), "\n\n")), nil
}

// pointers says where Debian keeps the texts of the named licences.
func pointers(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, wrap(fmt.Sprintf("On Debian systems, the complete text of the %s licence is in %s.", n, commonText(n))))
	}
	return out
}

func firstLines(text string, n int) string {
	lines := strings.SplitN(text, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// block formats text as the continuation lines of a field: each line
// indented by one space, an empty line as " .", tabs as spaces.
func block(text string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimSpace(text), "\n") {
		line = strings.TrimRight(strings.ReplaceAll(line, "\t", "    "), " ")
		if line == "" {
			line = "."
		}
		b.WriteString(" " + line + "\n")
	}
	return b.String()
}

// wrap breaks prose into lines of at most 76 columns.
func wrap(text string) string {
	var b strings.Builder
	n := 0
	for _, w := range strings.Fields(text) {
		switch {
		case n == 0:
		case n+1+len(w) > 76:
			b.WriteString("\n")
			n = 0
		default:
			b.WriteString(" ")
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
