package cliapp

import (
	"bytes"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func newApp(out *bytes.Buffer) *cli.App {
	app := &cli.App{
		Name:   "handoffctl",
		Usage:  "control handoffd",
		Writer: out,
		Flags:  []cli.Flag{&cli.StringFlag{Name: "control", Usage: "handoffd's control socket"}},
		Commands: []*cli.Command{
			{Name: "swap", Usage: "start the next generation", Action: func(*cli.Context) error { return nil }},
		},
	}
	Setup(app)
	return app
}

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    []string // each must appear in the output
		wantErr string
	}{
		{args: []string{"--version"}, want: []string{"handoffctl version dev (commit unknown)"}},
		{args: []string{"man"}, want: []string{".TH handoffctl 8", "control handoffd", "--control", "swap",
			".SH SEE ALSO\n.BR handoffd (8),\n.BR handoff.yaml (5)\n"}},
		{args: []string{"completion", "bash"}, want: []string{"complete -o bashdefault -o default -F _handoffctl_complete handoffctl"}},
		{args: []string{"completion", "zsh"}, want: []string{"#compdef handoffctl", "--generate-bash-completion"}},
		{args: []string{"completion", "fish"}, wantErr: "name a shell, bash or zsh"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			err := newApp(&out).Run(append([]string{"handoffctl"}, tc.args...))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one that says %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// The hidden commands stay out of the help and the man page.
func TestSetupHidesItsCommands(t *testing.T) {
	var out bytes.Buffer
	if err := newApp(&out).Run([]string{"handoffctl", "man"}); err != nil {
		t.Fatal(err)
	}
	for _, hidden := range []string{"print the man page", "completion"} {
		if strings.Contains(out.String(), hidden) {
			t.Errorf("man page shows the hidden %q:\n%s", hidden, out.String())
		}
	}
}
