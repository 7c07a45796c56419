package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/handoffd/handoffd/internal/cliapp"
	"github.com/handoffd/handoffd/internal/config"
)

// configReferenceCommand is the hidden "config-reference man|markdown":
// the reference of the config file, as the man page handoff.yaml(5) (make
// install) or as the Markdown of docs/configuration.md's keys.
func configReferenceCommand() *cli.Command {
	return &cli.Command{
		Name: "config-reference", Usage: "print the config file's reference", ArgsUsage: "man|markdown", Hidden: true,
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "man":
				if c.NArg() == 1 {
					return config.RenderMan(c.App.Writer, cliapp.Version)
				}
			case "markdown":
				if c.NArg() == 1 {
					return config.RenderMarkdown(c.App.Writer)
				}
			}
			return fmt.Errorf("config-reference: name a format, man or markdown, e.g. handoffd config-reference man")
		},
	}
}
