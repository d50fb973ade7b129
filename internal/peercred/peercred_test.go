package peercred

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/skylane/skylane/internal/asuser"
)

// TestGetSelf: a connection from this process has our credentials.
func TestGetSelf(t *testing.T) {
	ln, path := listen(t)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := accept(t, ln)
	cr, err := Get(s)
	if err != nil {
		t.Fatal(err)
	}
	if cr.UID != uint32(os.Getuid()) || cr.GID != uint32(os.Getgid()) || cr.PID != int32(os.Getpid()) {
		t.Errorf("got %+v, want uid %d gid %d pid %d", cr, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

// TestGetOtherIDs: a peer that connected under other ids (a thread that
// dropped to uid 65534, gid 65533 and groups 4242, 4243) is reported with
// those, not ours.
func TestGetOtherIDs(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("SKYLANE_REQUIRE_PRIV") == "1" {
			t.Fatal("needs root to change a thread's ids")
		}
		t.Skip("needs root to change a thread's ids")
	}
	ln, path := listen(t)
	var c *net.UnixConn
	err := asuser.Do(65534, 65533, []uint32{4242, 4243}, func() (err error) {
		c, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cr, err := Get(accept(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	if cr.UID != 65534 || cr.GID != 65533 || cr.PID != int32(os.Getpid()) {
		t.Errorf("got %+v, want uid 65534 gid 65533 pid %d", cr, os.Getpid())
	}
	if !slices.Equal(cr.Groups, []uint32{4242, 4243}) {
		t.Errorf("groups %v, want [4242 4243]", cr.Groups)
	}
}

func listen(t *testing.T) (*net.UnixListener, string) {
	dir, err := os.MkdirTemp("", "peercred")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Searchable and writable by the dropped thread's uid.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	os.Chmod(path, 0o777)
	return ln, path
}

func accept(t *testing.T, ln *net.UnixListener) *net.UnixConn {
	s, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
