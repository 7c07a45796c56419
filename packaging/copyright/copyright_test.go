package main

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

func TestIdentify(t *testing.T) {
	for _, tc := range []struct {
		text string
		want []string
	}{
		{"Permission is hereby granted, free of charge, to any person\nobtaining a copy of this software", []string{"Expat"}},
		{"> Redistribution and use in source and binary forms, with or without\n> modification, are permitted", []string{"BSD-2-clause"}},
		{"Redistribution and use in source and binary forms ... Neither the name of Google nor the names of its contributors may be used to endorse or promote products",
			[]string{"BSD-3-clause"}},
		{"                                 Apache License\n                           Version 2.0, January 2004", []string{"Apache-2.0"}},
		{"#### MIT License ####\nPermission is hereby granted, free of charge, to any person obtaining a copy\n" +
			"Licensed under the Apache License, Version 2.0 (the \"License\");", []string{"Apache-2.0", "Expat"}},
		{"Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee", []string{"ISC"}},
		{"All rights reserved. Do not copy.", nil},
	} {
		if got := identify(tc.text); !slices.Equal(got, tc.want) {
			t.Errorf("identify(%.40q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

func TestHolders(t *testing.T) {
	text := `Copyright (c) 2017 Nathan Sweet
Copyright (c) 2018, 2019 Cloudflare
> Copyright © 2011 Russ Ross
Copyright © fsnotify Authors. All rights reserved.
Copyright 2009 The Go Authors.
   copyright notice, this list of conditions and the following disclaimer
The above copyright notice and this permission notice shall be included
      Copyright [yyyy] [name of copyright owner]
COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
Copyright (c) 2017 Nathan Sweet`
	want := []string{"2017 Nathan Sweet", "2018, 2019 Cloudflare", "2011 Russ Ross", "fsnotify Authors", "2009 The Go Authors"}
	if got := holders(text); !slices.Equal(got, want) {
		t.Errorf("holders = %q, want %q", got, want)
	}
}

func TestLicenceField(t *testing.T) {
	got, err := licenceField([]string{"Copyright 2020 A\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n\tindented"})
	if err != nil {
		t.Fatal(err)
	}
	want := "Expat\n Copyright 2020 A\n .\n Permission is hereby granted, free of charge, to any person obtaining a copy\n     indented\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// Apache-2.0 alone: Debian ships the text, the field points to it.
	got, err = licenceField([]string{"Apache License\nVersion 2.0, January 2004\nTERMS AND CONDITIONS"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "Apache-2.0\n On Debian systems") || strings.Contains(got, "TERMS") {
		t.Errorf("Apache-2.0 field copies the text or does not point to it:\n%s", got)
	}
	if _, err := licenceField([]string{"Do what you like."}); err == nil || !strings.Contains(err.Error(), "Do what you like.") {
		t.Errorf("an unknown licence: err %v, want one that quotes it", err)
	}
}

func TestReadLegalWithoutLicence(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readLegal(dir); err == nil {
		t.Fatal("a module without a licence file: no error")
	}
}

func TestCheck(t *testing.T) {
	doc := "Files: GOROOT/src/*\nCopyright: 2009 The Go Authors\nLicense: BSD-3-clause\n text\nComment:\n The Go standard library and runtime of\n go1.26.8, linked into a.\n\n" +
		"Files: vendor/example.com/a/*\nCopyright: 2020 A\nLicense: Expat\n text\nComment:\n example.com/a v1.2.0, a Go module linked into a.\n\n" +
		"Files: vendor/example.com/long/path/*\nCopyright: 2020 B\nLicense: Expat\n text\nComment:\n example.com/long/path v0.0.0-20240521201337-686a1a2994c1,\n a Go module linked into a.\n"
	n := parseNamed(doc)
	if n.goVersion != "go1.26.8" || len(n.modules) != 2 || n.modules["example.com/long/path"] != "v0.0.0-20240521201337-686a1a2994c1" {
		t.Fatalf("parseNamed: %+v", n)
	}
	info := func(goVersion string, deps ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: goVersion}
		for _, d := range deps {
			path, version, _ := strings.Cut(d, "@")
			bi.Deps = append(bi.Deps, &debug.Module{Path: path, Version: version})
		}
		return bi
	}
	for _, tc := range []struct {
		name  string
		infos map[string]*debug.BuildInfo
		want  []string // in the error; none: no error
	}{
		{"complete", map[string]*debug.BuildInfo{
			"a": info("go1.26.8", "example.com/a@v1.2.0"),
			"b": info("go1.26.8", "example.com/long/path@v0.0.0-20240521201337-686a1a2994c1"),
		}, nil},
		{"a module missing", map[string]*debug.BuildInfo{
			"a": info("go1.26.8", "example.com/a@v1.2.0", "example.com/long/path@v0.0.0-20240521201337-686a1a2994c1", "example.com/new@v0.1.0"),
		}, []string{"a links example.com/new v0.1.0, which copyright does not name"}},
		{"another version", map[string]*debug.BuildInfo{
			"a": info("go1.26.8", "example.com/a@v1.3.0", "example.com/long/path@v0.0.0-20240521201337-686a1a2994c1"),
		}, []string{"a links example.com/a v1.3.0, but copyright names v1.2.0"}},
		{"a module no longer linked", map[string]*debug.BuildInfo{
			"a": info("go1.26.8", "example.com/a@v1.2.0"),
		}, []string{"copyright names example.com/long/path, which no binary links"}},
		{"another Go", map[string]*debug.BuildInfo{
			"a": info("go1.27.0", "example.com/a@v1.2.0", "example.com/long/path@v0.0.0-20240521201337-686a1a2994c1"),
		}, []string{"a is built by go1.27.0"}},
	} {
		err := check(n, "copyright", tc.infos)
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
	}
}

// TestHandoffdCopyright generates the copyright file of handoffd's
// programs from the real module graph: every module they link has a
// paragraph with a copyright and a licence it could name, and the file
// passes the check against that graph.
func TestHandoffdCopyright(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	t.Setenv("CGO_ENABLED", "0")
	pkgs := []string{"./cmd/handoffd", "./cmd/handoffctl"}
	doc, err := generate("../..", pkgs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := list("../..", pkgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.modules) < 5 {
		t.Fatalf("go list found %d modules, want handoffd's (cilium/ebpf, client_golang, ...)", len(b.modules))
	}
	infos := map[string]*debug.BuildInfo{}
	for _, m := range b.modules {
		for _, p := range m.programs {
			if infos[p] == nil {
				infos[p] = &debug.BuildInfo{GoVersion: b.goVersion}
			}
			infos[p].Deps = append(infos[p].Deps, &debug.Module{Path: m.path, Version: m.version})
		}
	}
	if err := check(parseNamed(doc), "the generated file", infos); err != nil {
		t.Error(err)
	}
	paras := strings.Split(strings.TrimSpace(doc), "\n\n")
	if !strings.HasPrefix(paras[0], "Format: "+formatURI) || !strings.HasPrefix(paras[1], "Files: *\n") {
		t.Errorf("the file starts with\n%s\n\n%s\nwant the Format header, then handoffd's Files: *", paras[0], paras[1])
	}
	for _, p := range paras[1:] {
		for _, field := range []string{"\nCopyright: ", "\nLicense: "} {
			i := strings.Index(p, field)
			if i < 0 || strings.TrimSpace(strings.SplitN(p[i+len(field):], "\n", 2)[0]) == "" {
				t.Errorf("paragraph without%s:\n%s", field, p)
			}
		}
	}
	if !regexp.MustCompile(`(?m)^Files: .*\bbpf/steer\.c\b.*\n(?:[^\n]+\n)*?License: Expat or GPL-2\n`).MatchString(doc) {
		t.Error("no paragraph for the eBPF programs' SPDX-License-Identifier (MIT OR GPL-2.0-only)")
	}
}
