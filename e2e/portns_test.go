package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/nettest"
)

// kernelBinds are the kernel's binds a port the user-space stack owns on
// every address refuses: "network host" (the port is added).
var kernelBinds = []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp6 [::]", "tcp6 [2001:2::1]", "tcp [::]"}

// checkBinds checks that every kernel bind of binds on port fails with
// EADDRINUSE, with and without SO_REUSEADDR and SO_REUSEPORT (held), or
// succeeds (!held).
func checkBinds(t *testing.T, ns *nettest.NS, binds []string, port int, held bool) {
	t.Helper()
	for _, b := range binds {
		network, host, _ := strings.Cut(b, " ")
		addr := fmt.Sprintf("%s:%d", host, port)
		for _, reuse := range []bool{false, true} {
			err := nettest.KernelBind(ns, network, addr, reuse)
			switch {
			case held && !errors.Is(err, unix.EADDRINUSE):
				t.Errorf("kernel bind %s %s (reuse %v) while an app owns the port: %v, want EADDRINUSE", network, addr, reuse, err)
			case !held && err != nil:
				t.Errorf("kernel bind %s %s (reuse %v) after the app let the port go: %v", network, addr, reuse, err)
			}
		}
	}
}

// waitBindable waits until a kernel socket can make the first of binds
// on port in ns (after a kill -9, for as long as the kernel takes to close
// the dead process's sockets and the app to learn its nexus is gone),
// then checks every bind.
func waitBindable(t *testing.T, ns *nettest.NS, binds []string, port int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	network, host, _ := strings.Cut(binds[0], " ")
	for nettest.KernelBind(ns, network, fmt.Sprintf("%s:%d", host, port), false) != nil {
		if time.Now().After(deadline) {
			t.Errorf("port %d still held 5 s after %s", port, what)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkBinds(t, ns, binds, port, false)
}

// serveUntilClosed serves banner from ln until the test closes ln.
func serveUntilClosed(ln net.Listener, banner string) {
	go http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		io.WriteString(rw, banner+" to "+r.RemoteAddr+"\n")
	}))
}

// TestOnePortNamespace: while a user-space stack owns TCP 8080 and UDP 5353
// on every address (and TCP 8081 on one), no kernel socket in its
// namespace binds them, with SO_REUSEADDR and SO_REUSEPORT or without;
// processes of that namespace reach the user-space server at the
// interface's addresses (through the kernel's loopback and the nexus's
// reservation, handed to the app), while the peer keeps reaching it over
// the device; once the app closes them the kernel has its ports back.
func TestOnePortNamespace(t *testing.T) {
	for _, d := range ethDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorld(t, d)
			ln, err := w.st.Listen("tcp", fmt.Sprintf(":%d", userPort))
			if err != nil {
				t.Fatal(err)
			}
			serveUntilClosed(ln, "user-space")
			ln1, err := w.st.Listen("tcp4", fmt.Sprintf("%v:%d", w.user4, userPort+1))
			if err != nil {
				t.Fatal(err)
			}
			serveUntilClosed(ln1, "user-space one address")
			pc, err := w.st.ListenPacket("udp", fmt.Sprintf(":%d", userUDP))
			if err != nil {
				t.Fatal(err)
			}
			udpEcho(t, pc)

			checkBinds(t, w.local, kernelBinds, userPort, true)
			checkBinds(t, w.local, []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp [::]"}, userPort+1, true)
			checkBinds(t, w.local, []string{"udp4 0.0.0.0", "udp4 198.18.0.1", "udp6 [::]", "udp6 [2001:2::1]", "udp [::]"}, userUDP, true)

			// The peer's connections are the user-space stack's alone: the
			// kernel's listener that reserves the port never answers
			// them (the device steers them away; its filter drops any
			// that reach it), nor does the kernel reset them.
			opens, rsts := kernelTCP(t, w.local, "PassiveOpens"), kernelResets(t, w.local)
			for _, a := range []netip.Addr{w.user4, w.user6} {
				if out := curl(t, w.peer, "-g", url("http", a, userPort)); !strings.HasPrefix(out, "user-space") {
					t.Errorf("curl %v from the peer: %q, want the user-space server", a, out)
				}
			}
			if n := kernelTCP(t, w.local, "PassiveOpens") - opens; n != 0 {
				t.Errorf("the local kernel accepted %d of the peer's connections to a user-space port", n)
			}
			if n := kernelResets(t, w.local) - rsts; n != 0 {
				t.Errorf("the local kernel reset %d of the peer's connections to a user-space port", n)
			}
			// This host's connections go through the kernel's loopback to
			// that listener, and on to the app.
			for _, a := range []netip.Addr{w.user4, w.user6} {
				if out := curl(t, w.local, "-g", url("http", a, userPort)); !strings.HasPrefix(out, "user-space") {
					t.Errorf("curl %v from the server's namespace: %q, want the user-space server", a, out)
				}
			}
			if n := kernelTCP(t, w.local, "PassiveOpens") - opens; n != 2 {
				t.Errorf("the local kernel accepted %d connections for this host's 2 curls", n)
			}
			if out := curl(t, w.local, url("http", w.user4, userPort+1)); !strings.HasPrefix(out, "user-space one address") {
				t.Errorf("curl %v:%d from the server's namespace: %q", w.user4, userPort+1, out)
			}
			udpPing(t, w.peer, netip.AddrPortFrom(w.user4, userUDP))
			// This host's datagrams go through the kernel's loopback to
			// the reservation, and on to the app, which answers through
			// it; the peer's still come over the device.
			for _, a := range []netip.Addr{w.user4, w.user6, netip.IPv6Loopback(), netip.AddrFrom4([4]byte{127, 0, 0, 1})} {
				udpPing(t, w.local, netip.AddrPortFrom(a, userUDP))
				bigPing(t, w.local, netip.AddrPortFrom(a, userUDP), 8192)
			}
			udpPing(t, w.peer, netip.AddrPortFrom(w.user6, userUDP))

			for _, c := range []interface{ Close() error }{ln, ln1, pc} {
				c.Close()
			}
			checkBinds(t, w.local, kernelBinds, userPort, false)
			checkBinds(t, w.local, []string{"tcp4 198.18.0.1"}, userPort+1, false)
			checkBinds(t, w.local, []string{"udp4 0.0.0.0", "udp6 [::]"}, userUDP, false)
		})
	}
}

// TestPortNamespaceKill: the kernel gets an app's port back on every path
// a process can die: kill -9 of `skylane serve` (its nexus in the same
// process: the kernel closes its reservations), kill -9 of an app of
// `skylane nexus` (the nexus sees its session end) and kill -9 of the
// nexus daemon (the kernel closes the nexus's sockets; the app closes its
// duplicate of the listener when it learns its nexus is gone). Meanwhile
// processes on the server's host reach the user-space server at the
// interface's address, in both cases.
func TestPortNamespaceKill(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "curl")
	bin := skylaneBinary(t)
	app := appBinary(t)
	for _, d := range ethDrivers {
		t.Run(d, func(t *testing.T) {
			v := nettest.NewVeth(t, nettest.VethOptions{})
			if d == "afxdp" {
				wireChecksums(t, v)
			}
			// skylane serve, kill -9.
			p := startServeProc(t, v.Local, bin, "--driver", d, "--dev", v.LocalName, "--addr", "198.18.0.1:8080")
			checkBinds(t, v.Local, []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp [::]"}, 8080, true)
			for _, from := range []*nettest.NS{v.Local, v.Peer} {
				if out := curl(t, from, "http://198.18.0.1:8080/"); !strings.HasPrefix(out, "hello from skylane") {
					t.Errorf("curl from %s to skylane serve: %q", from.Name, out)
				}
			}
			p.cmd.Process.Signal(unix.SIGKILL)
			<-p.exited
			waitBindable(t, v.Local, []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp [::]"}, 8080, "kill -9 of skylane serve")

			// skylane nexus and an app: kill -9 of the app, then of the
			// nexus.
			args, sock := nexusdArgs(t, d, v)
			nx := startProc(t, v.Local.Command, bin, args, `msg="nexus started"`)
			a := daemonApps[0]
			cfg := appConfig{Name: a.cfg.Name, Listen: a.cfg.Listen, Echo: "198.18.0.1:5305"} // 198.18.0.1:8081
			binds := []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp [::]"}
			udpBinds := []string{"udp4 0.0.0.0", "udp4 198.18.0.1", "udp [::]"}
			for round := range 2 {
				ap := startApp(t, app, a.uid, sock, cfg)
				checkBinds(t, v.Local, binds, 8081, true)
				checkCurl(t, v.Peer, cfg, a.uid)
				checkCurl(t, v.Local, cfg, a.uid) // from the nexus's host: through the app's host listener
				checkBinds(t, v.Local, udpBinds, 5305, true)
				for _, from := range []*nettest.NS{v.Peer, v.Local} { // the local one through the app's host socket
					udpPing(t, from, netip.MustParseAddrPort(cfg.Echo))
				}
				if round == 0 {
					ap.kill(t)
					waitSessionGone(t, bin, sock, ap.cmd.Process.Pid)
					waitBindable(t, v.Local, binds, 8081, "kill -9 of the app")
					waitBindable(t, v.Local, udpBinds, 5305, "kill -9 of the app")
					continue
				}
				nx.kill(t)
				waitBindable(t, v.Local, binds, 8081, "kill -9 of the nexus")
				// The app closes its host sockets once it learns its
				// nexus is gone.
				waitBindable(t, v.Local, udpBinds, 5305, "kill -9 of the nexus")
				ap.kill(t)
			}
		})
	}
}

// nexusdArgs writes daemonPolicy into a directory every test uid can
// reach and returns the arguments of `skylane nexus` on driver d and v's
// local end with that policy, and its control socket's path.
func nexusdArgs(t *testing.T, d string, v *nettest.Veth) (args []string, sock string) {
	t.Helper()
	dir := sharedDir(t)
	pol := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(pol, []byte(daemonPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "nexus.sock")
	return []string{"nexus", "--driver", d, "--dev", v.LocalName,
		"--socket", sock, "--socket-group", fmt.Sprint(socketGroup), "--policy", pol}, sock
}

// TestHostUDPDeadline: a UDP socket that also reads this host's datagrams
// (its host socket) keeps net.PacketConn's read deadlines: one that passes
// fails the read, one set while a read waits applies to that read, and a
// cleared one lets the next read take this host's datagram.
func TestHostUDPDeadline(t *testing.T) {
	w := newWorld(t, ethDrivers[1])
	pc, err := w.st.ListenPacket("udp4", fmt.Sprintf(":%d", userUDP))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	buf := make([]byte, 64)
	pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := pc.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	pc.SetReadDeadline(time.Time{})
	read := make(chan error, 1)
	go func() { _, _, err := pc.ReadFrom(buf); read <- err }()
	// Whether or not the read waits already, the deadline set now is its.
	pc.SetReadDeadline(time.Now().Add(-time.Second))
	select {
	case err := <-read:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read with a deadline set while it waited: %v, want os.ErrDeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a read still waits 10 s after its deadline was set in the past")
	}
	pc.SetReadDeadline(time.Time{})
	udpEcho(t, pc)
	udpPing(t, w.local, netip.AddrPortFrom(w.user4, userUDP))
}
