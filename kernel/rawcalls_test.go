package kernel

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// rawPackages are the packages whose functions only kernel, loader and
// bpf may call.
var rawPackages = []string{"golang.org/x/sys/unix", "syscall"}

// rawAllowed are the directories of the module, relative to its root,
// that may make raw system calls: the two kernel-facing packages, the
// generated eBPF bindings, and the end-to-end tests and benchmarks.
var rawAllowed = []string{"kernel", "loader", "bpf", "test"}

// TestNoRawCallsOutsideKernel keeps every raw system call of handoffd in
// kernel or loader, where each has a typed function and a test on the
// real kernel: no other non-test, non-generated file of the module may
// call, or take as a value, a function of x/sys/unix or syscall. Their
// constants, variables and types (a conversion such as
// syscall.Signal(n)) stay allowed.
func TestNoRawCallsOutsideKernel(t *testing.T) {
	funcs, types := rawDecls(t)
	root := moduleRoot(t)
	fset := token.NewFileSet()
	var files int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if path != root && skipDir(rel, path, d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		if ast.IsGenerated(f) {
			return nil
		}
		files++
		for _, pos := range rawUses(f, funcs, types) {
			p := fset.Position(pos.at)
			rp, _ := filepath.Rel(root, p.Filename)
			t.Errorf("%s:%d: %s: a raw system call outside kernel and loader; add a typed function to package kernel", rp, p.Line, pos.what)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The walk must have seen the code it guards, or it checks nothing.
	if files < 50 {
		t.Fatalf("checked %d files under %s; the walk misses the module's code", files, root)
	}
}

func skipDir(rel, path, name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor" {
		return true
	}
	for _, a := range rawAllowed {
		if filepath.ToSlash(rel) == a {
			return true
		}
	}
	// Another module (test/bench has its own go.mod) is not this one.
	_, err := os.Stat(filepath.Join(path, "go.mod"))
	return err == nil
}

type rawUse struct {
	at   token.Pos
	what string
}

// rawUses returns where f calls, or takes as a value, a function of one
// of rawPackages. A call of a name that is not a known type counts too,
// so that a function the parsed declarations miss is not let through.
func rawUses(f *ast.File, funcs, types map[string]bool) []rawUse {
	local := map[string]string{} // local name -> import path
	var uses []rawUse
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if !isRawPackage(path) {
			continue
		}
		name := path[strings.LastIndex(path, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		if name == "." {
			uses = append(uses, rawUse{imp.Pos(), "dot import of " + path})
		}
		local[name] = path
	}
	if len(local) == 0 {
		return uses
	}
	called := map[*ast.SelectorExpr]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		if c, ok := n.(*ast.CallExpr); ok {
			if sel, ok := ast.Unparen(c.Fun).(*ast.SelectorExpr); ok {
				called[sel] = true
			}
		}
		return true
	})
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		// An identifier the parser resolved is a local name, not a package.
		if !ok || id.Obj != nil {
			return true
		}
		path, ok := local[id.Name]
		if !ok {
			return true
		}
		key := path + "." + sel.Sel.Name
		switch {
		case funcs[key] && called[sel]:
			uses = append(uses, rawUse{sel.Pos(), "call of " + id.Name + "." + sel.Sel.Name})
		case funcs[key]:
			uses = append(uses, rawUse{sel.Pos(), id.Name + "." + sel.Sel.Name + " taken as a value"})
		case called[sel] && !types[key]:
			uses = append(uses, rawUse{sel.Pos(), "call of " + id.Name + "." + sel.Sel.Name + ", not a known type"})
		}
		return true
	})
	return uses
}

func isRawPackage(path string) bool {
	for _, p := range rawPackages {
		if path == p {
			return true
		}
	}
	return false
}

// rawDecls parses the files that go list builds of rawPackages for this
// platform and returns their package-level functions and types, as
// "path.Name".
func rawDecls(t *testing.T) (funcs, types map[string]bool) {
	t.Helper()
	args := append([]string{"list", "-f", "{{.ImportPath}} {{.Dir}}{{range .GoFiles}} {{.}}{{end}}"}, rawPackages...)
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", rawPackages, err)
	}
	funcs, types = map[string]bool{}, map[string]bool{}
	fset := token.NewFileSet()
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) < 3 {
			t.Fatalf("go list: %q", line)
		}
		path, dir := fields[0], fields[1]
		for _, name := range fields[2:] {
			f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					if d.Recv == nil && d.Name.IsExported() {
						funcs[path+"."+d.Name.Name] = true
					}
				case *ast.GenDecl:
					for _, s := range d.Specs {
						if ts, ok := s.(*ast.TypeSpec); ok && ts.Name.IsExported() {
							types[path+"."+ts.Name.Name] = true
						}
					}
				}
			}
		}
	}
	// Known names of each package, or the parse found nothing to guard.
	for _, want := range []string{"golang.org/x/sys/unix.Socketpair", "syscall.Exec"} {
		if !funcs[want] {
			t.Fatalf("no function %s among the parsed declarations", want)
		}
	}
	if !types["syscall.Signal"] || !types["golang.org/x/sys/unix.Stat_t"] {
		t.Fatal("no type syscall.Signal or unix.Stat_t among the parsed declarations")
	}
	return funcs, types
}

// moduleRoot returns the directory of this module's go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("go env GOMOD: not in a module")
	}
	return filepath.Dir(gomod)
}
