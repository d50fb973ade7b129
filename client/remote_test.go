package client_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
)

// childEnv names the control socket a child app process connects to.
const childEnv = "SKYLANE_CLIENT_TEST_CHILD"

// runChild is an app process: a Stack over the control socket at path,
// an echo server on TCP port 7 of every address; "ready" on stdout once it
// listens; a clean Close when stdin closes.
func runChild(path string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "child:", err); return 1 }
	nx, err := client.Connect(path)
	if err != nil {
		return fail(err)
	}
	st, err := client.New(nx, client.Options{Name: "child"})
	if err != nil {
		return fail(err)
	}
	ln, err := st.Listen("tcp", ":7")
	if err != nil {
		st.Close()
		return fail(err)
	}
	go func() { // ends when the listener closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	ln.Close()
	if err := st.Close(); err != nil {
		return fail(err)
	}
	return 0
}

type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startChild starts an app process on the control socket at path and
// waits until it listens.
func startChild(t *testing.T, path string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	c.cmd.Env = append(os.Environ(), childEnv+"="+path)
	c.cmd.Stderr = os.Stderr
	// The child must not outlive this process.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	ready := make(chan string, 1)
	go func() { // ends at the child's exit, when its stdout closes
		r := bufio.NewReader(out)
		l, _ := r.ReadString('\n')
		ready <- l
		io.Copy(io.Discard, r)
	}()
	select {
	case l := <-ready:
		if strings.TrimSpace(l) != "ready" {
			t.Fatalf("child did not start: %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("child not ready after 20s")
	}
	return c
}

// echo sends size random bytes through the echo server at addr from st
// and checks every byte comes back, in order.
func echo(t *testing.T, st *client.Stack, addr string, size int) {
	t.Helper()
	c, err := st.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	msg := make([]byte, size)
	rand.Read(msg)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	werr := make(chan error, 1)
	go func() { _, err := c.Write(msg); werr <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo %s: %v", addr, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("echo %s: write: %v", addr, err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo %s: %d bytes came back different", addr, size)
	}
}

// waitStats polls the nexus's stats until ok accepts them (bounded).
func waitStats(t *testing.T, n *nexus.Nexus, what string, ok func(nexus.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := n.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10s: %d ports, %d flows", what, len(st.Ports), st.Flows)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCrossProcess: an app in a child process gets its port over the
// control socket and echoes TCP for a stack on the other host; errors
// cross the socket as the flow package's; a malformed session ends alone;
// a killed app leaves no port and no flow, and the next one gets its
// listener port back.
func TestCrossProcess(t *testing.T) {
	w := newWorld(t)
	path := filepath.Join(t.TempDir(), "nexus.sock")
	ln, err := server.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, w.na, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	base, err := w.na.Stats()
	if err != nil {
		t.Fatal(err)
	}
	baseline := func(st nexus.Stats) bool { return len(st.Ports) == len(base.Ports) && st.Flows == base.Flows }

	ch := startChild(t, path)
	echo(t, w.sb, "198.18.0.1:7", 1<<20)
	echo(t, w.sb, "[2001:db8::1]:7", 64<<10)
	waitStats(t, w.na, "child's port", func(st nexus.Stats) bool { return len(st.Ports) == len(base.Ports)+1 })
	if st, err := w.na.Stats(); err == nil {
		t.Logf("with the child: %d ports (%s), %d flows; baseline %d ports, %d flows", len(st.Ports), st.Ports[len(st.Ports)-1].Name, st.Flows, len(base.Ports), base.Flows)
	}

	// The listener port is the child's: the nexus says so through the
	// socket, and errors.Is sees the flow package's error.
	nx, err := client.Connect(path)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := client.New(nx, client.Options{Name: "second"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Listen("tcp", "198.18.0.1:7"); !errors.Is(err, flow.ErrPortInUse) {
		t.Errorf("second listener on port 7: %v, want flow.ErrPortInUse", err)
	}
	if err := st2.Close(); err != nil {
		t.Errorf("close second stack: %v", err)
	}

	// A malformed request ends that session only.
	for _, bad := range []string{"{garbage", `{"op":"register","kind":1,"key":{"l":"AA=="}}`, `{"op":"open","name":"../x"}`, strings.Repeat("x", control.MaxMessage+10)} {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(bad)); err != nil {
			t.Fatal(err)
		}
		if k, err := c.Read(make([]byte, 64)); k != 0 {
			t.Errorf("request %.20q: got %d bytes of reply (%v), want the session closed", bad, k, err)
		}
		c.Close()
	}
	echo(t, w.sb, "198.18.0.1:7", 64<<10)

	// kill -9: the nexus closes the port and frees its flows.
	ch.cmd.Process.Kill()
	ch.cmd.Wait()
	waitStats(t, w.na, "after kill", baseline)

	// The next app registers the same listener port, and leaves cleanly.
	ch = startChild(t, path)
	echo(t, w.sb, "198.18.0.1:7", 256<<10)
	ch.stdin.Close()
	if err := ch.cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	waitStats(t, w.na, "after clean exit", baseline)
}
