// Command copyright writes the Debian copyright file (DEP-5) of the
// handoffd package, or checks one against the binaries the package ships.
//
//	copyright PKG...              writes the file for the main packages PKG
//	copyright -check FILE BIN...  fails unless FILE names the Go release and
//	                              every module, at its version, that the build
//	                              information of each BIN lists, and no other
//
// The file is generated, never edited, so that it stays true when a
// dependency changes: handoffd's licence (LICENSE, and the
// SPDX-License-Identifier of the files that say more, such as the eBPF
// programs), then the Go standard library's and each module's that
// `go list -deps` finds linked into PKG, read from the module's licence,
// NOTICE and PATENTS files in the module cache. A licence it cannot name
// is an error: a new dependency cannot slip into the package unrecorded.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	check := flag.Bool("check", false, "check FILE against the build information of BIN... instead of writing")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: copyright PKG... >copyright\n       copyright -check FILE BIN...")
	}
	flag.Parse()
	if flag.NArg() == 0 || (*check && flag.NArg() < 2) {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*check, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "copyright:", err)
		os.Exit(1)
	}
}

func run(check bool, args []string) error {
	if check {
		data, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		return checkBinaries(string(data), args[0], args[1:])
	}
	doc, err := generate(".", args)
	if err != nil {
		return err
	}
	_, err = os.Stdout.WriteString(doc)
	return err
}
