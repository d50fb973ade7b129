package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/inproc"
)

// nexusChildEnv names the control socket a child nexus process serves;
// peerEnv what the host on the other end of its wire does: "hold" accepts
// TCP on port 80 and never reads, "dial" also dials 198.18.0.1:80 over and
// over, says "ping" and prints "served" once a reply came back, then the
// same over UDP to 198.18.0.1:53 ("served udp"); "take" is
// "hold" with an app of the nexus itself on 198.18.0.1's TCP port 80.
const (
	nexusChildEnv = "SKYLANE_CLIENT_TEST_NEXUS"
	peerEnv       = "SKYLANE_CLIENT_TEST_PEER"
)

// goneWithin is how soon an app must learn that its nexus went.
const goneWithin = time.Second

// runNexusChild is a nexus process: nexus A (198.18.0.1) serving its
// control socket at path, on a memif wire to nexus B (198.18.0.2) with an
// in-process stack as peerEnv says; "ready" on stdout once it serves. It
// runs until killed or its stdin closes.
func runNexusChild(path, mode string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "nexus child:", err); return 1 }
	la, lb, err := memif.NewPair(memif.Options{Name: "lc"})
	if err != nil {
		return fail(err)
	}
	na, err := nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{addrA4}})
	if err != nil {
		return fail(err)
	}
	defer na.Close()
	nb, err := nexus.New(nexus.Options{Link: lb, Addrs: []netip.Addr{addrB4}})
	if err != nil {
		return fail(err)
	}
	defer nb.Close()
	sb, err := client.New(inproc.Nexus(nb), client.Options{Name: "peer"})
	if err != nil {
		return fail(err)
	}
	defer sb.Close()
	ln, err := sb.Listen("tcp", ":80")
	if err != nil {
		return fail(err)
	}
	go func() { // holds every connection, reading nothing, until the process ends
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	if mode == "take" { // an app of this nexus holds TCP port 80 before any other
		sa, err := client.New(inproc.Nexus(na), client.Options{Name: "taker"})
		if err != nil {
			return fail(err)
		}
		defer sa.Close()
		if _, err := sa.Listen("tcp", ":80"); err != nil {
			return fail(err)
		}
	}
	os.Remove(path) // the socket of a nexus killed before
	sl, err := server.Listen(path)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go server.Serve(ctx, na, sl)
	fmt.Println("ready")
	if mode == "dial" {
		go func() {
			for _, p := range []struct {
				ping func(*client.Stack) error
				says string
			}{{pingOnce, "served"}, {pingUDP, "served udp"}} {
				for i := 0; ; i++ { // bounded: 1000 tries, 100 s at most
					if p.ping(sb) == nil {
						fmt.Println(p.says)
						break
					}
					if i == 1000 {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// pingOnce dials 198.18.0.1:80 from st, says "ping" and reads the echo.
func pingOnce(st *client.Stack) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := st.DialContext(ctx, "tcp", "198.18.0.1:80")
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != "ping" {
		return fmt.Errorf("echo %q", b)
	}
	return nil
}

// pingUDP sends "ping" from st to 198.18.0.1:53 and reads the echo.
func pingUDP(st *client.Stack) error {
	pc, err := st.ListenPacket("udp4", ":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(time.Second))
	if _, err := pc.WriteTo([]byte("ping"), &net.UDPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 53}); err != nil {
		return err
	}
	b := make([]byte, 16)
	n, _, err := pc.ReadFrom(b)
	if err != nil {
		return err
	}
	if string(b[:n]) != "ping" {
		return fmt.Errorf("echo %q", b[:n])
	}
	return nil
}

// startNexusChild starts a nexus process serving path; its stdout lines
// come on the channel, the first ("ready") already read.
func startNexusChild(t *testing.T, path, mode string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nexusChildEnv+"="+path, peerEnv+"="+mode)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the test
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() { // ends when the child's stdout closes
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case l := <-lines:
		if l != "ready" {
			t.Fatalf("nexus child did not start: %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("nexus child not ready after 20 s")
	}
	return cmd, lines
}

// memfdMaps counts this process's mappings of memfds: a channel's
// buffers, metadata, rings, advisories and stats.
func memfdMaps(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("cannot read mappings: %v", err)
	}
	return strings.Count(string(b), "/memfd:")
}

// appOn is an app on the nexus serving path: a Stack listening on TCP
// port 80. The cleanup closes both.
func appOn(t *testing.T, path string, o client.ConnectOptions) (*client.Stack, net.Listener) {
	t.Helper()
	nx, err := client.ConnectWith(path, o)
	if err != nil {
		t.Fatal(err)
	}
	st, err := client.New(nx, client.Options{Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ln, err := st.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return st, ln
}

// TestNexusKilled: an app whose nexus (another process) is killed with
// SIGKILL learns it within goneWithin in each of a blocked Accept, Read,
// Write and Dial, as an error for which errors.Is(err,
// client.ErrNexusGone) holds and that names the nexus's socket; later
// calls fail the same way; and the Stack has released its goroutines,
// descriptors and channel mappings before the app closes anything.
func TestNexusKilled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nexus.sock")
	cmd, _ := startNexusChild(t, path, "hold")
	baseG, baseFD, baseMaps := runtime.NumGoroutine(), nettest.OpenFDs(t), memfdMaps(t)

	st, ln := appOn(t, path, client.ConnectOptions{})
	if memfdMaps(t) == baseMaps {
		t.Fatal("the channel's memory is not mapped: the mapping check is broken")
	}
	type result struct {
		op  string
		err error
		at  time.Time
	}
	results := make(chan result, 4)
	report := func(op string, err error) { results <- result{op, err, time.Now()} }
	go func() { _, err := ln.Accept(); report("accept", err) }()

	rc, err := st.Dial("tcp", "198.18.0.2:80")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	go func() { _, err := rc.Read(make([]byte, 1)); report("read", err) }()

	wc, err := st.Dial("tcp", "198.18.0.2:80")
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	var written, inWrite atomic.Int64 // inWrite: when the pending Write began, Unix ns
	go func() {
		buf := make([]byte, 64<<10)
		for {
			inWrite.Store(time.Now().UnixNano())
			n, err := wc.Write(buf)
			written.Add(int64(n))
			if err != nil {
				report("write", err)
				return
			}
		}
	}()
	// Nothing answers a SYN to port 81: the Dial waits.
	go func() { _, err := st.Dial("tcp", "198.18.0.2:81"); report("dial", err) }()

	// The peer reads nothing: the writer blocks once its send buffer and
	// the peer's window are full. Wait until one Write has been pending
	// for 300 ms.
	defer func() {
		if t.Failed() {
			t.Logf("written %d, pending write for %v", written.Load(), time.Since(time.Unix(0, inWrite.Load())))
		}
	}()
	eventually(t, 30*time.Second, "the writer blocked", func() bool {
		return written.Load() >= 64<<10 && time.Since(time.Unix(0, inWrite.Load())) > 300*time.Millisecond
	})
	t.Logf("the writer blocked after %d bytes", written.Load())
	select {
	case r := <-results:
		t.Fatalf("%s returned before the nexus went: %v", r.op, r.err)
	default:
	}

	killed := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		select {
		case r := <-results:
			took := r.at.Sub(killed)
			if !errors.Is(r.err, client.ErrNexusGone) || !strings.Contains(r.err.Error(), path) {
				t.Errorf("%s: %v, want an error wrapping client.ErrNexusGone naming %s", r.op, r.err, path)
			}
			if took > goneWithin {
				t.Errorf("%s returned %v after the kill, want within %v", r.op, took, goneWithin)
			}
			t.Logf("%s: %v after the kill: %v", r.op, took.Round(time.Microsecond), r.err)
		case <-time.After(10 * time.Second):
			t.Fatal("a blocked call still blocked 10 s after the kill")
		}
	}
	if _, err := st.Dial("tcp", "198.18.0.2:80"); !errors.Is(err, client.ErrNexusGone) {
		t.Errorf("dial after the nexus went: %v", err)
	}
	if _, err := st.Listen("tcp", ":81"); !errors.Is(err, client.ErrNexusGone) {
		t.Errorf("listen after the nexus went: %v", err)
	}
	if _, err := rc.Write([]byte("x")); !errors.Is(err, client.ErrNexusGone) {
		t.Errorf("write after the nexus went: %v", err)
	}
	// Released without a Close of the app's: the netstack's and the
	// session's goroutines, the socket, the channel's memfds and eventfds
	// and its mappings.
	eventually(t, 5*time.Second, "goroutines, descriptors and mappings back at the baseline", func() bool {
		return runtime.NumGoroutine() <= baseG && nettest.OpenFDs(t) <= baseFD && memfdMaps(t) <= baseMaps
	})
	t.Logf("goroutines %d (baseline %d), fds %d (%d), memfd mappings %d (%d)",
		runtime.NumGoroutine(), baseG, nettest.OpenFDs(t), baseFD, memfdMaps(t), baseMaps)
	if err := st.Close(); err != nil {
		t.Errorf("close after the nexus went: %v", err)
	}
}

// TestReattach: a Stack connected with Reattach outlives its nexus: its
// connection fails with ErrNexusGone when the nexus is killed, but its
// listeners' Accept and ReadFrom go on, and once a new nexus serves the
// socket they are registered there again and serve a peer's TCP connection
// and UDP datagram. Notify hears of both changes.
func TestReattach(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nexus.sock")
	cmd, _ := startNexusChild(t, path, "hold")
	baseG, baseFD := runtime.NumGoroutine(), nettest.OpenFDs(t)

	notes := make(chan error, 4)
	st, ln := appOn(t, path, client.ConnectOptions{Reattach: true, Notify: func(err error) { notes <- err }})
	accepted := make(chan error, 1)
	go func() { // an echo server that lasts across nexuses
		for {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	pc, err := st.ListenPacket("udp", ":53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	echoed := make(chan error, 1)
	go func() { // a UDP echo that lasts across nexuses
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				echoed <- err
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	c, err := st.Dial("tcp", "198.18.0.2:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); read <- err }()

	cmd.Process.Kill()
	select {
	case err := <-read:
		if !errors.Is(err, client.ErrNexusGone) {
			t.Fatalf("read: %v, want client.ErrNexusGone", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read still blocked 10 s after the kill")
	}
	cmd.Wait()

	select {
	case err := <-notes:
		if !errors.Is(err, client.ErrNexusGone) {
			t.Errorf("first notice %v, want client.ErrNexusGone", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no notice of the nexus going")
	}
	_, lines := startNexusChild(t, path, "dial")
	for _, want := range []string{"served", "served udp"} {
		select {
		case l := <-lines:
			if l != want {
				t.Fatalf("new nexus's peer: %q, want %q", l, want)
			}
		case err := <-accepted:
			t.Fatalf("accept: %v", err)
		case err := <-echoed:
			t.Fatalf("UDP read: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("the re-attached listeners: no %q in 30 s", want)
		}
	}
	select {
	case err := <-notes:
		if err != nil {
			t.Errorf("second notice %v, want nil (attached again)", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no notice of the re-attach")
	}
	if got := st.Addrs(); len(got) != 1 || got[0] != addrA4 {
		t.Errorf("addresses after re-attach: %v", got)
	}
	ln.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept after Close: %v", err)
	}
	pc.Close()
	if err := <-echoed; !errors.Is(err, net.ErrClosed) {
		t.Errorf("UDP read after Close: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	eventually(t, 5*time.Second, "goroutines and descriptors back at the baseline", func() bool {
		return runtime.NumGoroutine() <= baseG && nettest.OpenFDs(t) <= baseFD
	})
}

// TestInProcessNexusClosed: a Stack on a nexus in this process learns of
// its Close as one in another process learns of a kill: a blocked Accept
// and Read fail with ErrNexusGone within goneWithin.
func TestInProcessNexusClosed(t *testing.T) {
	w := newWorld(t)
	ln, err := w.sa.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lb, err := w.sb.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	c, err := w.sa.Dial("tcp", "198.18.0.2:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	errs := make(chan error, 2)
	go func() { _, err := ln.Accept(); errs <- err }()
	go func() { _, err := c.Read(make([]byte, 1)); errs <- err }()
	closed := time.Now()
	if err := w.na.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, client.ErrNexusGone) {
				t.Errorf("%v, want client.ErrNexusGone", err)
			}
			if took := time.Since(closed); took > goneWithin {
				t.Errorf("returned %v after the nexus closed", took)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("still blocked 10 s after the nexus closed")
		}
	}
}

// TestCloseRacesNexusGone: the app closing its Stack and its nexus going
// at the same moment, under connections that dial, write and read: every
// call returns, each error of the stack's says ErrClosed or ErrNexusGone,
// and nothing is left running.
func TestCloseRacesNexusGone(t *testing.T) {
	baseG := runtime.NumGoroutine()
	for round := range 10 {
		w := newWorld(t)
		lb, err := w.sb.Listen("tcp", ":7")
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, lb)
		errs := make(chan error, 64)
		const workers = 8
		for range workers {
			go func() {
				buf := make([]byte, 4<<10)
				for {
					c, err := w.sa.Dial("tcp", "198.18.0.2:7")
					if err != nil {
						errs <- err
						return
					}
					for range 8 {
						if _, err = c.Write(buf); err == nil {
							_, err = io.ReadFull(c, buf)
						}
						if err != nil {
							c.Close()
							errs <- err
							return
						}
					}
					c.Close()
				}
			}()
		}
		eventually(t, 10*time.Second, "connections moving", func() bool { return w.sa.Endpoint().Stats().TxPackets > 100 })
		done := make(chan error, 2)
		go func() { done <- w.na.Close() }()
		go func() { done <- w.sa.Close() }()
		<-done
		<-done
		for range workers {
			select {
			case err := <-errs:
				if !errors.Is(err, client.ErrClosed) && !errors.Is(err, client.ErrNexusGone) {
					t.Errorf("round %d: %v, want client.ErrClosed or client.ErrNexusGone", round, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: a connection still running 10 s after Close", round)
			}
		}
		lb.Close()
		w.sb.Close()
		w.nb.Close()
	}
	eventually(t, 10*time.Second, "goroutines back at the baseline", func() bool { return runtime.NumGoroutine() <= baseG })
}

// TestReattachPortTaken: when the port of a re-attaching Stack's listener
// is taken on the new nexus before the Stack comes back, that listener's
// Accept fails with the nexus's reason (flow.ErrPortInUse) rather than
// wait for ever.
func TestReattachPortTaken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nexus.sock")
	cmd, _ := startNexusChild(t, path, "hold")
	_, ln := appOn(t, path, client.ConnectOptions{Reattach: true})
	accepted := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.Close()
		}
	}()
	cmd.Process.Kill()
	cmd.Wait()
	startNexusChild(t, path, "take")
	select {
	case err := <-accepted:
		if !errors.Is(err, flow.ErrPortInUse) || !strings.Contains(err.Error(), "listen again on port 80") {
			t.Fatalf("accept: %v, want flow.ErrPortInUse saying it could not listen again", err)
		}
		t.Logf("accept: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("accept still waiting 30 s after the new nexus came up with its port taken")
	}
}

// TestReattachGap: while a re-attaching Stack has no nexus, its
// ListenPacket socket's write fails with ErrNexusGone and a read waits
// until its deadline, then times out; Close ends a read waiting there.
func TestReattachGap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nexus.sock")
	cmd, _ := startNexusChild(t, path, "hold")
	st, _ := appOn(t, path, client.ConnectOptions{Reattach: true})
	pc, err := st.ListenPacket("udp", ":53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cmd.Process.Kill()
	cmd.Wait()
	to := &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 53}
	eventually(t, 5*time.Second, "writes fail with ErrNexusGone", func() bool {
		_, err := pc.WriteTo([]byte("x"), to)
		return errors.Is(err, client.ErrNexusGone)
	})
	pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	start := time.Now()
	if _, _, err := pc.ReadFrom(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read in the gap: %v, want a timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("read with a 200 ms deadline returned after %v", took)
	}
	pc.SetReadDeadline(time.Time{})
	read := make(chan error, 1)
	go func() { _, _, err := pc.ReadFrom(make([]byte, 16)); read <- err }()
	pc.Close()
	select {
	case err := <-read:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read ended by Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still waiting 5 s after Close")
	}
}
