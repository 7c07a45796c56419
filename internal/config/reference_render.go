package config

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// manDescription is the DESCRIPTION of handoff.yaml(5).
var manDescription = []string{
	"handoffd(8) reads its settings and the services it runs from one YAML file, " +
		"`/etc/handoff/handoff.yaml` unless `--config` names another. Unknown keys are errors, and a bad " +
		"file is refused with one line that names each field to fix. A key left out takes its default. " +
		"Durations are written as `500ms`, `10s`, `2m`.",
	"A reload (SIGHUP to handoffd, `handoffctl reload-config`, `systemctl reload handoffd`) applies a valid " +
		"new file without forcing a swap: each key below says what a reload does with it. A file that cannot " +
		"apply whole is refused with its reasons on one line, and the running config stays.",
}

// RenderMarkdown writes the reference as Markdown: the whole example, then
// a table of keys per section. It is the generated part of
// docs/configuration.md.
func RenderMarkdown(w io.Writer) error {
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, "A config that sets most keys:\n\n```yaml\n%s```\n", WholeExample)
	for _, sec := range Reference {
		fmt.Fprintf(b, "\n### %s\n\n%s\n\n", sec.Title, sec.Doc)
		b.WriteString("| key | value | default | what it does | example |\n|---|---|---|---|---|\n")
		for _, k := range sec.Keys {
			fmt.Fprintf(b, "| `%s` | %s | %s | %s On reload: %s. | `%s: %s` |\n",
				k.Name(), cell(k.Type), cell(k.defaultText(true)), cell(k.Doc), k.Reload,
				k.Name(), cell(k.Example))
		}
	}
	return b.Flush()
}

// cell escapes s for a cell of a Markdown table.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// defaultText is what the reference says of the key's default.
func (k Key) defaultText(markdown bool) string {
	switch {
	case k.DefaultNote != "":
		return k.DefaultNote
	case k.Required:
		return "required"
	case markdown:
		return "`" + k.Default + "`"
	}
	return k.Default
}

// RenderMan writes the reference as the man page handoff.yaml(5), in roff;
// version names the handoffd it documents.
func RenderMan(w io.Writer, version string) error {
	b := bufio.NewWriter(w)
	b.WriteString(".nh\n")
	fmt.Fprintf(b, ".TH HANDOFF.YAML 5 \"\" \"handoffd %s\" \"File Formats\"\n", roffText(version))
	b.WriteString(".SH NAME\nhandoff.yaml \\- configuration file of handoffd\n")
	b.WriteString(".SH SYNOPSIS\n.I /etc/handoff/handoff.yaml\n")
	b.WriteString(".SH DESCRIPTION\n")
	for i, p := range manDescription {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		b.WriteString(roff(p) + "\n")
	}
	b.WriteString(".SH EXAMPLE\n.EX\n")
	for _, line := range strings.Split(strings.TrimSuffix(WholeExample, "\n"), "\n") {
		b.WriteString(roffCode(line) + "\n")
	}
	b.WriteString(".EE\n")
	for _, sec := range Reference {
		fmt.Fprintf(b, ".SH %s\n%s\n", strings.ToUpper(sec.Title), roff(sec.Doc))
		for _, k := range sec.Keys {
			fmt.Fprintf(b, ".TP\n.B %s\n", k.Name())
			if k.Required {
				fmt.Fprintf(b, "%s; required\n", roffText(k.Type))
			} else {
				fmt.Fprintf(b, "%s; default: %s\n", roffText(k.Type), roffCode(k.defaultText(false)))
			}
			fmt.Fprintf(b, ".br\n%s\n", roff(k.Doc))
			fmt.Fprintf(b, ".br\nOn reload: %s.\n", roffText(k.Reload.String()))
			fmt.Fprintf(b, ".br\nExample: \\fB%s: %s\\fR\n", k.Name(), roffCode(k.Example))
		}
	}
	b.WriteString(".SH FILES\n.TP\n.I /etc/handoff/handoff.yaml\nThe config file.\n" +
		".TP\n.I /etc/handoff/handoff.yaml.example\nThe example installed with the package.\n" +
		".TP\n.I /usr/share/doc/handoffd/docs/configuration.md\nThis reference, with the rest of the guide.\n")
	b.WriteString(".SH SEE ALSO\n.BR handoffd (8),\n.BR handoffctl (8)\n")
	return b.Flush()
}

var codeSpan = regexp.MustCompile("`([^`]*)`")

// roff sets a sentence of the reference for roff: `code` in bold.
func roff(s string) string {
	var out strings.Builder
	last := 0
	for _, m := range codeSpan.FindAllStringSubmatchIndex(s, -1) {
		out.WriteString(roffText(s[last:m[0]]))
		out.WriteString(`\fB` + roffCode(s[m[2]:m[3]]) + `\fR`)
		last = m[1]
	}
	out.WriteString(roffText(s[last:]))
	return lineStart(out.String())
}

// roffText escapes text for roff: backslashes.
func roffText(s string) string { return strings.ReplaceAll(s, `\`, `\e`) }

// roffCode escapes code for roff: backslashes, and minus signs so that
// they are not set as hyphens.
func roffCode(s string) string {
	return lineStart(strings.ReplaceAll(roffText(s), "-", `\-`))
}

// lineStart keeps a line that starts with a control character from being
// read as a request.
func lineStart(s string) string {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		return `\&` + s
	}
	return s
}
