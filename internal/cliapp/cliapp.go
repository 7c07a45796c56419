// Package cliapp holds what handoffd's command-line programs share: the
// version line that --version prints, and the hidden commands that print
// a program's man page and shell completion, generated from its urfave/cli
// definition (make install and make deb use them). It is not a place for
// the programs' own flags or commands.
package cliapp

import (
	_ "embed"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// Version and Commit are set at build time with -ldflags
// "-X github.com/handoffd/handoffd/internal/cliapp.Version=...".
var (
	Version = "dev"
	Commit  = "unknown"
)

// VersionLine is what --version prints after the program's name.
func VersionLine() string { return fmt.Sprintf("%s (commit %s)", Version, Commit) }

// manSection is the man section of handoffd's programs: system
// administration, as they need root or handoffd's group.
const manSection = 8

// manPages are handoffd's man pages, as name and section; each page's SEE
// ALSO names the others.
var manPages = [][2]string{{"handoffd", "8"}, {"handoffctl", "8"}, {"handoff.yaml", "5"}}

// seeAlso is the SEE ALSO section of the man page of the program name.
func seeAlso(name string) string {
	var refs []string
	for _, p := range manPages {
		if p[0] != name {
			refs = append(refs, fmt.Sprintf(".BR %s (%s)", p[0], p[1]))
		}
	}
	return ".SH SEE ALSO\n" + strings.Join(refs, ",\n") + "\n"
}

var (
	//go:embed completion.bash
	bashCompletion string
	//go:embed completion.zsh
	zshCompletion string
)

// Setup sets app's version and shell completion and adds the hidden
// commands "man" (whose SEE ALSO names handoffd's other man pages, the
// config file's handoff.yaml(5) among them) and "completion bash|zsh".
func Setup(app *cli.App) {
	app.Version = VersionLine()
	app.EnableBashCompletion = true
	app.Commands = append(app.Commands,
		&cli.Command{
			Name: "man", Usage: "print the man page", Hidden: true,
			Action: func(c *cli.Context) error {
				page, err := app.ToManWithSection(manSection)
				if err != nil {
					return fmt.Errorf("man page: %w", err)
				}
				_, err = fmt.Fprint(c.App.Writer, strings.TrimRight(page, "\n")+"\n\n"+seeAlso(app.Name))
				return err
			},
		},
		&cli.Command{
			Name: "completion", Usage: "print the shell completion script", ArgsUsage: "bash|zsh", Hidden: true,
			Action: func(c *cli.Context) error {
				script, ok := map[string]string{"bash": bashCompletion, "zsh": zshCompletion}[c.Args().First()]
				if !ok || c.NArg() != 1 {
					return fmt.Errorf("completion: name a shell, bash or zsh, e.g. %s completion bash", app.Name)
				}
				_, err := fmt.Fprint(c.App.Writer, strings.ReplaceAll(script, "PROG", app.Name))
				return err
			},
		})
}
