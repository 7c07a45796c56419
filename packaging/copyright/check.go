package main

import (
	"debug/buildinfo"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
)

// named is what a copyright file names: the Go release of the standard
// library's paragraph, and each module's version, read from the first
// line of each paragraph's Comment.
type named struct {
	goVersion string
	modules   map[string]string
}

var (
	moduleComment = regexp.MustCompile(`(?m)^Files: vendor/(\S+)/\*\n(?:.*\n)*?Comment:\n (\S+)\s+(\S+),\s+a\s+Go\s+module`)
	stdComment    = regexp.MustCompile(`(?m)^Comment:\n The\s+Go\s+standard\s+library\s+and\s+runtime\s+of\s+(\S+),`)
)

func parseNamed(doc string) named {
	n := named{modules: map[string]string{}}
	if m := stdComment.FindStringSubmatch(doc); m != nil {
		n.goVersion = m[1]
	}
	for _, para := range strings.Split(doc, "\n\n") {
		if m := moduleComment.FindStringSubmatch(para + "\n"); m != nil && m[1] == m[2] {
			n.modules[m[1]] = m[3]
		}
	}
	return n
}

// checkBinaries checks the copyright file doc (read from file) against
// the build information of the binaries bins.
func checkBinaries(doc, file string, bins []string) error {
	infos := map[string]*debug.BuildInfo{}
	for _, bin := range bins {
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			return fmt.Errorf("read the build information of %s: %w", bin, err)
		}
		infos[filepath.Base(bin)] = info
	}
	return check(parseNamed(doc), file, infos)
}

// check returns an error that lists each module (or Go release) a binary
// links at a version the copyright file does not name, and each module
// the file names that no binary links.
func check(n named, file string, infos map[string]*debug.BuildInfo) error {
	var errs []error
	linked := map[string]bool{}
	for _, bin := range slices.Sorted(maps.Keys(infos)) {
		info := infos[bin]
		if info.GoVersion != n.goVersion {
			errs = append(errs, fmt.Errorf("%s is built by %s, but %s names the standard library of %q", bin, info.GoVersion, file, n.goVersion))
		}
		for _, d := range info.Deps {
			linked[d.Path] = true
			switch v, ok := n.modules[d.Path]; {
			case !ok:
				errs = append(errs, fmt.Errorf("%s links %s %s, which %s does not name", bin, d.Path, d.Version, file))
			case v != d.Version:
				errs = append(errs, fmt.Errorf("%s links %s %s, but %s names %s", bin, d.Path, d.Version, file, v))
			}
		}
	}
	for _, p := range slices.Sorted(maps.Keys(n.modules)) {
		if !linked[p] {
			errs = append(errs, fmt.Errorf("%s names %s, which no binary links", file, p))
		}
	}
	if len(errs) > 0 {
		errs = append(errs, errors.New("regenerate it with packaging/copyright (make deb does)"))
	}
	return errors.Join(errs...)
}
