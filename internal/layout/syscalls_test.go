package layout

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// rawSyscalls are the low packages (directories relative to the module
// root) whose non-test files may import golang.org/x/sys/unix: the
// drivers, shared memory, the kernel-facing helpers of the nexus and of
// tests, and internal/syscalls, which wraps the calls that higher packages
// need. Keeping the list short keeps raw system calls, their errno
// handling and their unsafe pointers where they are reviewed as such.
var rawSyscalls = []string{
	"internal/asuser",
	"internal/nettest",
	"internal/peercred",
	"internal/shm",
	"internal/syscalls",
	"neigh/kernel",
	"netif/afpacket",
	"netif/afxdp",
	"netif/drivers",
	"netif/steer",
	"netif/tun",
}

const unixPath = "golang.org/x/sys/unix"

// TestRawSyscallsStayLow fails when a package outside rawSyscalls imports
// x/sys/unix in a non-test file, and when a package on the list no longer
// does (so the list does not grow stale).
func TestRawSyscallsStayLow(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	users := map[string][]string{} // directory -> files importing unix
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); path == unixPath {
				rel, _ := filepath.Rel(root, p)
				dir := filepath.ToSlash(filepath.Dir(rel))
				users[dir] = append(users[dir], filepath.ToSlash(rel))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the module at %s: %v", root, err)
	}
	if len(users) == 0 {
		t.Fatalf("no file of the module at %s imports %s: the walk is broken", root, unixPath)
	}
	for dir, files := range users {
		if !slices.Contains(rawSyscalls, dir) {
			t.Errorf("package %[3]s imports %[2]s (%[1]s) but is not one of the low packages allowed raw system calls: "+
				"call a function of internal/syscalls (add one there if none fits) or of internal/shm, "+
				"or, if %[3]s is itself a low, kernel-facing package, add it to rawSyscalls in internal/layout",
				strings.Join(files, ", "), unixPath, dir)
		}
	}
	for _, dir := range rawSyscalls {
		if _, ok := users[dir]; !ok {
			t.Errorf("%s is allowed raw system calls but no longer imports %s: remove it from rawSyscalls in internal/layout", dir, unixPath)
		}
	}
}
