package control

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestListenSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nexus.sock")

	// A stale socket file, as a nexus killed with -9 leaves it.
	old, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()

	s, err := ListenSocket(path, 4242)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != SocketMode || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want %o socket", fi.Mode(), SocketMode)
	}
	if st := fi.Sys().(*syscall.Stat_t); os.Getuid() == 0 && st.Gid != 4242 {
		t.Errorf("socket group %d, want 4242", st.Gid)
	}
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatalf("new socket does not answer: %v", err)
	}
	c.Close()

	// A second nexus on the same path is refused while the first lives.
	if _, err := ListenSocket(path, -1); !errors.Is(err, ErrNexusRunning) || !strings.Contains(err.Error(), "pid") {
		t.Errorf("second nexus: %v, want ErrNexusRunning naming the pid", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close() // again: nothing
	for _, p := range []string{path, path + ".lock"} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Close: %v", p, err)
		}
	}

	// A live listener that holds no lock (an older nexus) is refused too.
	live, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ListenSocket(path, -1); !errors.Is(err, ErrNexusRunning) {
		t.Errorf("live unlocked socket: %v, want ErrNexusRunning", err)
	}
	live.Close()
	if _, err := os.Lstat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused ListenSocket left its lock file: %v", err)
	}

	// Not a socket: left alone.
	if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenSocket(path, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "mine" {
		t.Errorf("regular file changed: %q", b)
	}
}
