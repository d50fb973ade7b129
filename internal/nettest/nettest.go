// Package nettest builds the real network hosts privileged tests and benches
// run against: named network namespaces and veth pairs between them, with
// addresses in 198.18.0.0/15 (IPv4) and 2001:2::/48 (IPv6), the ranges set
// aside for benchmarking (RFC 2544, RFC 5180).
//
// Invariants:
//   - Nothing touches the test process's own namespace: every link and
//     address lives in a namespace this package created, so tests may run in
//     parallel (across packages too) with the same addresses, and no
//     traffic can reach a host outside them.
//   - Everything made is removed by t.Cleanup, in reverse order, also when
//     the test fails or panics: the veth, then the namespace.
//   - Namespace switches happen on a locked OS thread that is restored (or,
//     if it cannot be, left locked so Go retires it), so no goroutine ever
//     runs in a namespace by accident.
//
// Privileged tests call [RequirePriv] first: it skips when not root, except
// when SKYLANE_REQUIRE_PRIV=1 (make test under CI), where it fails.
package nettest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequirePriv skips t unless the process is root. With
// SKYLANE_REQUIRE_PRIV=1 in the environment a missing privilege is a failure
// instead: CI must not pass by skipping.
func RequirePriv(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("SKYLANE_REQUIRE_PRIV") == "1" {
		t.Fatal("this test needs root (SKYLANE_REQUIRE_PRIV=1 forbids skipping): run make test as root")
	}
	t.Skip("needs root; run as root, or set SKYLANE_REQUIRE_PRIV=1 to make this a failure")
}

// OpenFDs returns how many file descriptors the process has open, for
// tests that check a close path leaves none behind. It skips the test where
// /proc/self/fd cannot be read.
func OpenFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open fds: %v", err)
	}
	return len(ents)
}

// RequireCommand skips t when a program is not installed, failing instead
// under SKYLANE_REQUIRE_PRIV=1 (make test installs it there).
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("SKYLANE_REQUIRE_PRIV") == "1" {
		t.Fatalf("%s not installed (make test installs it): %v", name, err)
	}
	t.Skipf("%s not installed; run make test as root to install it", name)
	return ""
}

// NS is a named network namespace (visible to `ip netns exec`).
type NS struct {
	Name   string
	handle netns.NsHandle
}

// uniqueName returns prefix plus 8 random hex digits: unique across parallel
// test processes, and short enough for IFNAMSIZ (15) with a 7-byte prefix.
func uniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("nettest: crypto/rand: %v", err)) // cannot happen on Linux ≥ 3.17
	}
	return prefix + hex.EncodeToString(b[:])
}

// NewNS creates a fresh named namespace with loopback up, removed when the
// test ends.
func NewNS(t testing.TB) *NS {
	t.Helper()
	ns, err := newNS(uniqueName("skyl-"))
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.remove(); err != nil {
			t.Errorf("remove network namespace %s: %v", ns.Name, err)
		}
	})
	return ns
}

func newNS(name string) (_ *NS, err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("get current namespace: %w", err)
	}
	defer orig.Close()
	h, nerr := netns.NewNamed(name) // also moves this thread into it
	if serr := netns.Set(orig); serr != nil {
		// The thread is in an unknown namespace: keep it locked so the
		// runtime retires it when this goroutine exits.
		if nerr == nil {
			h.Close()
			_ = netns.DeleteNamed(name)
		}
		return nil, fmt.Errorf("restore namespace after creating %s: %w", name, serr)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, nerr)
	}
	ns := &NS{Name: name, handle: h}
	defer func() {
		if err != nil {
			_ = ns.remove()
		}
	}()
	nl, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("namespace %s: find lo: %w", name, err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("namespace %s: set lo up: %w", name, err)
	}
	return ns, nil
}

func (ns *NS) remove() error {
	err := ns.handle.Close()
	if derr := netns.DeleteNamed(ns.Name); derr != nil {
		err = errors.Join(err, derr)
	}
	return err
}

// Handle returns the namespace's handle (an fd the NS keeps open).
func (ns *NS) Handle() netns.NsHandle { return ns.handle }

// Netlink returns a netlink handle operating inside the namespace. The
// caller closes it.
func (ns *NS) Netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in namespace %s: %w", ns.Name, err)
	}
	return h, nil
}

// Do runs f on a locked OS thread inside the namespace, then moves the thread
// back. Sockets, TUN devices and XDP attachments made by f stay in the
// namespace and may be used from any goroutine afterwards.
func (ns *NS) Do(f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", ns.Name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Left locked on purpose: the runtime retires the thread.
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", ns.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Command returns a command that runs name inside the namespace
// (`ip netns exec`). Pass a context with a deadline: request loops and
// kernel peers must be bounded in time.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Veth is a veth pair between two fresh namespaces. The local end is the one
// the code under test drives (a Skylane driver); the peer end is an ordinary
// kernel host. Both ends carry kernel addresses, so the kernel stack on the
// local side coexists with the user-space stack there.
type Veth struct {
	Local, Peer         *NS
	LocalName, PeerName string
	LocalIndex          int // ifindex of the local end, in Local
	LocalMAC, PeerMAC   net.HardwareAddr
	// Addresses, as prefixes of their subnet: 198.18.0.1/24 and
	// 198.18.0.2/24, 2001:2::1/64 and 2001:2::2/64.
	LocalAddr, PeerAddr   netip.Prefix
	LocalAddr6, PeerAddr6 netip.Prefix
}

// VethOptions tunes NewVeth. The zero value is the usual pair.
type VethOptions struct {
	// MTU of both ends; 0 keeps the kernel's default (1500).
	MTU int
	// NoLocalAddr leaves the local end without kernel addresses (the
	// user-space stack alone answers there). The fields still hold the
	// addresses the local side is meant to use.
	NoLocalAddr bool
}

// Addresses every Veth uses: each pair lives in its own namespaces, so the
// same addresses never collide.
var (
	localAddr  = netip.MustParsePrefix("198.18.0.1/24")
	peerAddr   = netip.MustParsePrefix("198.18.0.2/24")
	localAddr6 = netip.MustParsePrefix("2001:2::1/64")
	peerAddr6  = netip.MustParsePrefix("2001:2::2/64")
)

// NewVeth creates two namespaces and a veth pair between them, both ends up,
// with addresses (IPv6 without duplicate address detection, so they are
// usable at once). All of it is removed when the test ends.
func NewVeth(t testing.TB, opts VethOptions) *Veth {
	t.Helper()
	v := &Veth{
		Local: NewNS(t), Peer: NewNS(t),
		LocalName: uniqueName("skl"), PeerName: uniqueName("skp"),
		LocalAddr: localAddr, PeerAddr: peerAddr,
		LocalAddr6: localAddr6, PeerAddr6: peerAddr6,
	}
	if err := v.create(opts); err != nil {
		t.Fatalf("create veth pair: %v", err)
	}
	t.Cleanup(func() {
		// Deleting one end deletes both; the namespaces' cleanups
		// (registered earlier, so run later) remove them after.
		nl, err := v.Local.Netlink()
		if err != nil {
			t.Errorf("remove veth %s: %v", v.LocalName, err)
			return
		}
		defer nl.Close()
		if l, err := nl.LinkByName(v.LocalName); err == nil {
			if err := nl.LinkDel(l); err != nil {
				t.Errorf("remove veth %s: %v", v.LocalName, err)
			}
		}
	})
	return v
}

func (v *Veth) create(opts VethOptions) error {
	nl, err := v.Local.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	pl, err := v.Peer.Netlink()
	if err != nil {
		return err
	}
	defer pl.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = v.LocalName
	if opts.MTU > 0 {
		attrs.MTU = opts.MTU
	}
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: v.PeerName, PeerNamespace: netlink.NsFd(int(v.Peer.handle))}
	if err := nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", v.LocalName, v.PeerName, err)
	}
	local, err := nl.LinkByName(v.LocalName)
	if err != nil {
		return fmt.Errorf("find %s: %w", v.LocalName, err)
	}
	peer, err := pl.LinkByName(v.PeerName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", v.PeerName, v.Peer.Name, err)
	}
	if opts.MTU > 0 {
		if err := pl.LinkSetMTU(peer, opts.MTU); err != nil {
			return fmt.Errorf("set MTU of %s: %w", v.PeerName, err)
		}
	}
	v.LocalIndex = local.Attrs().Index
	v.LocalMAC = local.Attrs().HardwareAddr
	v.PeerMAC = peer.Attrs().HardwareAddr
	if err := addAddrs(pl, peer, v.PeerAddr, v.PeerAddr6); err != nil {
		return fmt.Errorf("%s: %w", v.PeerName, err)
	}
	if !opts.NoLocalAddr {
		if err := addAddrs(nl, local, v.LocalAddr, v.LocalAddr6); err != nil {
			return fmt.Errorf("%s: %w", v.LocalName, err)
		}
	}
	if err := nl.LinkSetUp(local); err != nil {
		return fmt.Errorf("set %s up: %w", v.LocalName, err)
	}
	if err := pl.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set %s up: %w", v.PeerName, err)
	}
	if err := waitLocalRoute(pl, v.PeerAddr6.Addr()); err != nil {
		return fmt.Errorf("%s: %w", v.PeerName, err)
	}
	if !opts.NoLocalAddr {
		if err := waitLocalRoute(nl, v.LocalAddr6.Addr()); err != nil {
			return fmt.Errorf("%s: %w", v.LocalName, err)
		}
	}
	return nil
}

// localRouteTimeout bounds waitLocalRoute; the kernel installs the route
// within milliseconds, so hitting it means IPv6 is off on the device.
const localRouteTimeout = 2 * time.Second

// waitLocalRoute waits until the kernel routes a locally (RTN_LOCAL). The
// kernel installs an IPv6 address's local route shortly after the link comes
// up, even with NODAD: a packet sent before then is dropped, which made
// IPv6 tests flaky. Polled, because netlink offers no event for "route
// usable" that is simpler than this bounded loop.
func waitLocalRoute(h *netlink.Handle, a netip.Addr) error {
	deadline := time.Now().Add(localRouteTimeout)
	for {
		rs, err := h.RouteGet(a.AsSlice())
		if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no local route")
			}
			return fmt.Errorf("address %v not usable after %v (is IPv6 disabled?): %w", a, localRouteTimeout, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func addAddrs(h *netlink.Handle, l netlink.Link, v4, v6 netip.Prefix) error {
	for _, p := range []netip.Prefix{v4, v6} {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add address %v: %w", p, err)
		}
	}
	return nil
}

// KernelBind binds a kernel socket in ns as a server would (network "tcp",
// "tcp4", "tcp6", "udp", "udp4" or "udp6"; TCP sockets listen), with
// SO_REUSEADDR and SO_REUSEPORT if reuse, closes it and returns the bind's
// error: whether the kernel lets a socket take that address and port.
func KernelBind(ns *NS, network, addr string, reuse bool) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// Go sets SO_REUSEADDR on listening TCP sockets already;
			// reuse adds it to UDP and SO_REUSEPORT to both.
			if reuse {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
			}
		})
		return errors.Join(err, serr)
	}}
	return ns.Do(func() error {
		var c io.Closer
		var err error
		if strings.HasPrefix(network, "tcp") {
			c, err = lc.Listen(context.Background(), network, addr)
		} else {
			c, err = lc.ListenPacket(context.Background(), network, addr)
		}
		if err != nil {
			return err
		}
		return c.Close()
	})
}
