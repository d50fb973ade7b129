package drivers

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Reserver holds ports in the kernel's stack for the apps of a nexus that
// shares its device with the kernel (AF_XDP, AF_PACKET): one port
// namespace for both stacks, as Skywalk's netns reservations are. Each
// listener flow an app registers is backed by a kernel socket the nexus
// holds, bound to the flow's local address (the wildcard for a listener on
// any address) and port:
//
//   - No kernel socket can bind that address and port while the app owns
//     it: the bind fails with EADDRINUSE, with or without SO_REUSEADDR or
//     SO_REUSEPORT (the reservation sets neither on UDP; on TCP it sets
//     SO_REUSEADDR only to ignore TIME-WAIT leftovers, and listens, which
//     no later binder may share). A port a kernel socket holds already
//     fails the reservation, so the flow: the check is the kernel's own,
//     with no window between a look at /proc and the bind.
//   - The reservation binds freely (IP_FREEBIND): it holds an address the
//     kernel does not have yet (a tentative IPv6 address, one removed and
//     added again) against the kernel's sockets once it has it.
//   - The reservation goes with the flow (the nexus closes it), and with
//     the nexus: the kernel closes a dead process's sockets, kill -9
//     included. An app never holds the reservation itself.
//   - A reservation serves this host only: a socket filter, locked so
//     that nobody may remove it, drops every packet that did not arrive
//     on the loopback device. Processes on the nexus's own host reach the
//     app at the interface's address through it (the nexus hands the app
//     a duplicate, Reservation.Listener): a TCP reservation listens and the
//     app accepts those connections; on a UDP one the app reads those
//     datagrams and answers through it. A remote SYN or datagram that
//     reaches the kernel (a fragment, a flow the device cannot steer) is
//     dropped there instead of being answered by the kernel or queued.
//
// Ports of outgoing connections are not reserved (one socket per
// connection would spend the nexus's descriptors): apps take them from a
// range disjoint from the kernel's ephemeral range (AppEphemeral), so
// kernel and user space never pick the same source port.
//
// The sockets are made in the network namespace of the thread that called
// NewReserver, by a goroutine locked to a thread of its own that entered
// that namespace (the nexus's worker may run on any thread).
type Reserver struct {
	ifindex int // immutable: the device, for IPv6 link-local addresses
	req     chan func()
	done    chan struct{} // closed by Close
	wg      sync.WaitGroup
	once    sync.Once
}

// NewReserver starts a Reserver in the calling thread's network namespace.
// ifindex is the device's interface index (link-local IPv6 addresses are
// bound on it). The caller closes it.
func NewReserver(ifindex int) (*Reserver, error) {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("reserve ports: open this thread's network namespace: %w (is /proc mounted?)", err)
	}
	r := &Reserver{ifindex: ifindex, req: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	r.wg.Add(1)
	go r.serve(ns, started)
	if err := <-started; err != nil {
		r.wg.Wait()
		return nil, err
	}
	return r, nil
}

// serve runs on a thread of its own in the namespace until Close.
func (r *Reserver) serve(ns *os.File, started chan<- error) {
	defer r.wg.Done()
	// Never unlocked: the thread leaves the namespace only by exiting,
	// which the runtime does when a locked goroutine returns.
	runtime.LockOSThread()
	err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
	ns.Close()
	if err != nil {
		started <- fmt.Errorf("reserve ports: enter the network namespace: %w", err)
		return
	}
	started <- nil
	for {
		select {
		case f := <-r.req:
			f()
		case <-r.done:
			return
		}
	}
}

// ErrReserverClosed is returned by Reserve after Close.
var ErrReserverClosed = errors.New("port reserver closed")

// Reservation is one port held in the kernel's stack for a listener flow.
type Reservation struct {
	fd  int // the kernel socket; -1 once closed
	tcp bool
	mu  sync.Mutex
}

// hostBacklog bounds the local connections waiting for the app's Accept
// in the kernel, as a kernel server's listen(2) backlog does.
const hostBacklog = 128

// loopbackIndex is the loopback device's interface index in every network
// namespace (the kernel's LOOPBACK_IFINDEX).
const loopbackIndex = 1

// Reserve reserves key's local address and port in the kernel: key is a
// listener flow's (packet.Key.Listener3 or Listener2; a Listener2 key's
// local address is the unspecified address of its version), TCP or UDP.
// An error wraps flow.ErrKernelPort and unix.EADDRINUSE when a kernel
// socket holds the port.
func (r *Reserver) Reserve(key packet.Key) (*Reservation, error) {
	if key.Proto != packet.ProtoTCP && key.Proto != packet.ProtoUDP {
		return nil, fmt.Errorf("reserve %v: only TCP and UDP ports: %w", key, ErrUnsupported)
	}
	var (
		res *Reservation
		err error
	)
	ran := make(chan struct{})
	select {
	case r.req <- func() { res, err = r.reserve(key); close(ran) }:
		<-ran
	case <-r.done:
		return nil, fmt.Errorf("reserve %v: %w", key, ErrReserverClosed)
	}
	return res, err
}

func (r *Reserver) reserve(key packet.Key) (*Reservation, error) {
	la := key.LocalAddrPort()
	family, typ := unix.AF_INET, unix.SOCK_STREAM
	if key.Version == 6 {
		family = unix.AF_INET6
	}
	tcp := key.Proto == packet.ProtoTCP
	if !tcp {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reserve %s %v: socket: %w", protoName(key.Proto), la, err)
	}
	res := &Reservation{fd: fd, tcp: tcp}
	if err := r.setup(fd, key, la); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			// The flow table's error for a kernel socket's port, so
			// that apps see the same refusal either way.
			err = fmt.Errorf("%w: %w", flow.ErrKernelPort, err)
		}
		return nil, fmt.Errorf("reserve %s %v in the kernel: %w", protoName(key.Proto), la, err)
	}
	return res, nil
}

func (r *Reserver) setup(fd int, key packet.Key, la netip.AddrPort) error {
	tcp := key.Proto == packet.ProtoTCP
	if key.Version == 6 {
		// An IPv6 reservation holds IPv6 only: the IPv4 side is a
		// key of its own.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
	}
	// Free bind: the reservation holds the address even while the kernel
	// does not have it (an IPv6 address still tentative, one removed and
	// added again), so a kernel socket that binds it once it is back
	// still conflicts.
	lvl, opt := unix.IPPROTO_IP, unix.IP_FREEBIND
	if key.Version == 6 {
		lvl, opt = unix.IPPROTO_IPV6, unix.IPV6_FREEBIND
	}
	if err := unix.SetsockoptInt(fd, lvl, opt, 1); err != nil {
		return fmt.Errorf("free bind: %w", err)
	}
	if tcp {
		// Only so that a TIME-WAIT leftover of an old kernel connection
		// does not hold the port against us; a listening socket shares
		// its port with no later binder, SO_REUSEADDR or not.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fmt.Errorf("SO_REUSEADDR: %w", err)
		}
	}
	// The filter before the bind: nothing may queue on the socket before
	// it is in place.
	if err := lockFilter(fd); err != nil {
		return err
	}
	var sa unix.Sockaddr
	if key.Version == 6 {
		s := &unix.SockaddrInet6{Port: int(la.Port()), Addr: la.Addr().As16()}
		if la.Addr().IsLinkLocalUnicast() {
			s.ZoneId = uint32(r.ifindex)
		}
		sa = s
	} else {
		sa = &unix.SockaddrInet4{Port: int(la.Port()), Addr: la.Addr().Unmap().As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if tcp {
		if err := unix.Listen(fd, hostBacklog); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	return nil
}

// skfAdIfindex is the classic BPF "absolute load" offset that reads the
// packet's input interface index: SKF_AD_OFF (-0x1000) + SKF_AD_IFINDEX
// (8), as an unsigned 32-bit word (linux/filter.h).
const skfAdIfindex = 0xfffff008

// lockFilter attaches the reservation's socket filter and locks it
// (SO_LOCK_FILTER: the app that gets a duplicate of the socket can neither
// detach nor replace it): packets that came in on the loopback device are
// kept, the rest dropped.
func lockFilter(fd int) error {
	prog := []unix.SockFilter{
		// A = the interface index the packet came in on.
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdIfindex},
		// lo: keep (jump 0); anything else: drop (jump 1).
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: loopbackIndex},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp); err != nil {
		return fmt.Errorf("attach socket filter: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER, 1); err != nil {
		return fmt.Errorf("lock socket filter: %w", err)
	}
	return nil
}

// Listener returns a duplicate of the reservation's kernel socket, for
// the app that owns the flow (its host socket): a TCP one listens for the connections of local
// processes (net.FileListener); on a UDP one the app reads their
// datagrams and sends its answers (net.FilePacketConn). The caller owns
// the file.
func (res *Reservation) Listener() (*os.File, error) {
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.fd < 0 {
		return nil, fmt.Errorf("reservation closed: %w", os.ErrClosed)
	}
	fd, err := unix.FcntlInt(uintptr(res.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the host socket: %w", err)
	}
	return os.NewFile(uintptr(fd), "skylane-host-"+protoName(res.proto())), nil
}

func (res *Reservation) proto() uint8 {
	if res.tcp {
		return packet.ProtoTCP
	}
	return packet.ProtoUDP
}

// Close gives the port back to the kernel. A TCP reservation stops
// listening first (shutdown), which also stops the duplicates Listener
// handed out: an app's Accept on one fails at once. (A shutdown would not
// wake a reader of an unconnected UDP socket: its duplicates just stay.)
// A duplicate its app did not close still holds the port bound until it
// is closed, as any socket of the app's own would; the client library
// closes it when its listener or packet conn closes or its nexus goes.
// Safe to call more than once.
func (res *Reservation) Close() error {
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.fd < 0 {
		return nil
	}
	if res.tcp {
		unix.Shutdown(res.fd, unix.SHUT_RDWR) // ENOTCONN-free on a listener; nothing to do on error
	}
	err := unix.Close(res.fd)
	res.fd = -1
	return err
}

// Close stops the Reserver's thread. Reservations made stay until they are
// closed.
func (r *Reserver) Close() error {
	r.once.Do(func() { close(r.done) })
	r.wg.Wait()
	return nil
}

func protoName(p uint8) string {
	if p == packet.ProtoUDP {
		return "udp"
	}
	return "tcp"
}

// minAppEphemeral is the fewest ports AppEphemeral hands apps: with fewer,
// a busy app would run out of source ports toward one server.
const minAppEphemeral = 1024

// AppEphemeral returns the local ports apps' outgoing connections take
// when the kernel shares the device: a range disjoint from the kernel's
// ephemeral range (/proc/sys/net/ipv4/ip_local_port_range of the calling
// thread's namespace), so that a kernel socket's connect(2) never picks a
// port a user-space connection uses, with no socket per connection. It
// takes the ports above the kernel's range (61000-65535 with Linux's
// default 32768-60999), else those below it down to 1024; ok is false when
// neither leaves minAppEphemeral ports (the kernel's range is then
// returned, and the two may collide).
func AppEphemeral() (r [2]uint16, ok bool) {
	lo, hi := uint16(32768), uint16(60999) // the kernel's default
	// /proc/sys/net answers for the namespace of the thread that opens it.
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var l, h uint16
		if _, err := fmt.Sscan(string(b), &l, &h); err == nil && l > 0 && h >= l {
			lo, hi = l, h
		}
	}
	if 65535-int(hi) >= minAppEphemeral {
		return [2]uint16{hi + 1, 65535}, true
	}
	if int(lo)-1024 >= minAppEphemeral {
		return [2]uint16{1024, lo - 1}, true
	}
	return [2]uint16{lo, hi}, false
}
