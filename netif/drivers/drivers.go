// Package drivers opens a netif.Link by driver name (docs/design.md §9): the one
// place that knows every driver, so that commands (skylane serve), tests and
// benches choose a device with a Spec instead of each importing and
// configuring the drivers themselves. netif and the drivers never import it.
//
// Every driver acts in the network namespace of the calling OS thread: run
// Open on a locked thread inside the namespace (nettest's NS.Do), or in a
// process started in it (ip netns exec).
//
// Errors: Open's errors wrap one of ErrNotRoot (missing privileges),
// ErrNoInterface (the device does not exist in this namespace),
// ErrUnsupported (an unknown driver or mode, or one this kernel or device
// cannot do) or ErrBadSpec (fields that contradict the driver), always with
// the cause and what to do about it. Test them with errors.Is.
//
// Beside Open: KernelPorts tells which ports the kernel's sockets hold (the
// flow table's PortTaken), Reserver holds the apps' listener ports in the
// kernel's stack (nexus.Options.Reserve: one port namespace, and the host
// listeners local processes reach apps through) and AppEphemeral gives
// apps' dials a port range of their own; Steering keeps a steering
// device's map in step with a nexus's flows, a stopgap until the nexus
// does both itself.
//
// Invariants:
//   - Open returns the driver's own Link, not a wrapper (memif aside), so
//     its optional interfaces (netif.FlowSteerer, netif.SuperPacketLink,
//     afxdp.Link) stay visible to type assertions.
//   - On error nothing Open made is left: no socket, no BPF program, no
//     device.
package drivers

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/netif/tun"
)

// Driver names, as Spec.Driver and `skylane serve --driver` take them.
const (
	Memif    = "memif"
	TUN      = "tun"
	AFPacket = "afpacket"
	AFXDP    = "afxdp"
)

// Names lists the drivers Open knows, in the order of docs/design.md §9.
func Names() []string { return []string{Memif, TUN, AFPacket, AFXDP} }

// Modes of Spec.Mode, per driver. The empty mode is each driver's default
// (the first listed).
const (
	// AF_XDP: where the XDP program runs.
	ModeGeneric = "generic" // in the kernel's receive path (skb mode): every driver has it
	ModeNative  = "native"  // in the device driver (veth has it; many NICs do)
	// AF_PACKET: whether the kernel's stack is kept off the user-space flows.
	ModeSteer = "steer" // a TC ingress program drops the flows user space registered (needs TCX, Linux 6.6)
	ModeTap   = "tap"   // no program: only for an interface on which the kernel has no address
)

var modes = map[string][]string{
	Memif:    {""},
	TUN:      {""},
	AFPacket: {ModeSteer, ModeTap},
	AFXDP:    {ModeGeneric, ModeNative},
}

// Errors Open wraps; see the package doc.
var (
	ErrNotRoot     = errors.New("needs root")
	ErrNoInterface = errors.New("no such network interface")
	ErrUnsupported = errors.New("unsupported")
	ErrBadSpec     = errors.New("bad driver spec")
)

// Spec chooses and configures a driver.
type Spec struct {
	// Driver is Memif, TUN, AFPacket or AFXDP.
	Driver string
	// Dev is the interface: an existing Ethernet interface for AFPacket and
	// AFXDP; for TUN the device to create (empty lets the kernel name it);
	// for Memif the wire's name.
	Dev string
	// Mode is the driver's mode (Mode* constants); empty is its default.
	Mode string
	// Addrs are the kernel's addresses on a TUN device it creates (e.g.
	// 198.18.1.1/24, so the kernel routes 198.18.1.0/24 into the device,
	// toward the user-space stack). TUN only.
	Addrs []netip.Prefix
	// MTU is the device's MTU for TUN and Memif (0: 1500). AFPacket and
	// AFXDP take the interface's: leave it 0.
	MTU int
	// Queue is the AF_XDP queue to bind (veth has only queue 0). AFXDP only.
	Queue int
	// RingSize is the AF_XDP rings' size, and so the RX and TX frames of
	// the UMEM (afxdp.Options.RingSize); 0 is afxdp.DefaultRingSize.
	// AFXDP only.
	RingSize int
	// FrameSize is the AF_XDP UMEM frame size, 2048 or 4096
	// (afxdp.Options.FrameSize); 0 is afxdp.DefaultFrameSize. 4096 halves
	// the descriptors a multi-buffer super packet takes. AFXDP only.
	FrameSize int
	// Flows is the flow map the steering programs consult (AFXDP, and
	// AFPacket in ModeSteer): several links may share one, and the caller
	// closes it after them. Nil makes one the link owns.
	Flows *steer.Flows
}

// Pair is what Open returns for Memif: the local end of an in-memory wire,
// with the far end for whoever plays the peer.
type Pair struct {
	netif.Link
	peer netif.Link
}

// Peer returns the far end of the wire. Closing either end closes both.
func (p *Pair) Peer() netif.Link { return p.peer }

// Open opens the link s describes, in the calling thread's network
// namespace. The caller owns it (usually by handing it to nexus.New).
func Open(s Spec) (netif.Link, error) {
	ms, ok := modes[s.Driver]
	if !ok {
		return nil, fmt.Errorf("driver %q: %w driver (have: %s)", s.Driver, ErrUnsupported, strings.Join(Names(), ", "))
	}
	mode := s.Mode
	if mode == "" {
		mode = ms[0]
	}
	if !contains(ms, mode) {
		if ms[0] == "" {
			return nil, fmt.Errorf("driver %s has no modes, got %q: %w", s.Driver, s.Mode, ErrUnsupported)
		}
		return nil, fmt.Errorf("driver %s: mode %q: %w mode (have: %s)", s.Driver, s.Mode, ErrUnsupported, strings.Join(ms, ", "))
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := needCaps(s.Driver, privileges(s.Driver, mode)...); err != nil {
		return nil, err
	}
	switch s.Driver {
	case Memif:
		a, b, err := memif.NewPair(memif.Options{Name: s.Dev, MTU: s.MTU})
		if err != nil {
			return nil, fmt.Errorf("memif: %w: %w", ErrBadSpec, err)
		}
		return &Pair{Link: a, peer: b}, nil
	case TUN:
		l, err := tun.New(tun.Options{Name: s.Dev, MTU: s.MTU, Addrs: s.Addrs})
		if err != nil {
			return nil, classify(TUN, s.Dev, err)
		}
		return l, nil
	case AFPacket:
		if err := ethernetDevice(s.Dev); err != nil {
			return nil, err
		}
		l, err := afpacket.New(afpacket.Options{Interface: s.Dev, Steer: mode == ModeSteer, Flows: s.Flows})
		if err != nil {
			return nil, classify(AFPacket, s.Dev, err)
		}
		return l, nil
	case AFXDP:
		if err := ethernetDevice(s.Dev); err != nil {
			return nil, err
		}
		xm := steer.XDPGeneric
		if mode == ModeNative {
			xm = steer.XDPNative
		}
		l, err := afxdp.Open(afxdp.Options{Interface: s.Dev, Queue: s.Queue, Mode: xm, Flows: s.Flows, RingSize: s.RingSize, FrameSize: s.FrameSize})
		if err != nil {
			return nil, classify(AFXDP, s.Dev, err)
		}
		return l, nil
	}
	panic("unreachable: modes and the switch disagree on " + s.Driver)
}

// CheckPrivileges reports, as an error wrapping ErrNotRoot, whether the
// calling thread lacks a capability Open needs for s; it is nil for an
// unknown driver (Open says that). Commands call it first, so that a user
// without root hears that before anything else.
func CheckPrivileges(s Spec) error {
	ms, ok := modes[s.Driver]
	if !ok {
		return nil
	}
	mode := s.Mode
	if mode == "" {
		mode = ms[0]
	}
	return needCaps(s.Driver, privileges(s.Driver, mode)...)
}

// privileges lists the capabilities a driver needs in a mode.
func privileges(driver, mode string) []capability {
	switch driver {
	case TUN:
		return []capability{capNetAdmin}
	case AFPacket:
		if mode == ModeSteer {
			return []capability{capNetRaw, capNetAdmin, capBPF}
		}
		return []capability{capNetRaw}
	case AFXDP:
		return []capability{capNetRaw, capNetAdmin, capBPF}
	}
	return nil
}

// check refuses the fields a driver does not take, rather than ignoring
// them: a TUN address given to AF_XDP is a mistake the user should hear of.
func (s *Spec) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("driver %s: %w: %s", s.Driver, ErrBadSpec, fmt.Sprintf(format, args...))
	}
	ether := s.Driver == AFPacket || s.Driver == AFXDP
	switch {
	case ether && s.Dev == "":
		return bad("name the interface (Dev, --dev)")
	case len(s.Dev) >= unix.IFNAMSIZ:
		return bad("interface name %q longer than %d bytes", s.Dev, unix.IFNAMSIZ-1)
	case len(s.Addrs) > 0 && s.Driver != TUN:
		return bad("Addrs are the kernel's addresses on a TUN device; on %s give the interface its addresses with ip addr", s.Driver)
	case ether && s.MTU != 0:
		return bad("the MTU is the interface's (set it with ip link set %s mtu N)", s.Dev)
	case (s.Queue != 0 || s.RingSize != 0 || s.FrameSize != 0) && s.Driver != AFXDP:
		return bad("Queue, RingSize and FrameSize are for AF_XDP only")
	case s.Flows != nil && !ether:
		return bad("Flows is for the steering drivers (afxdp, afpacket)")
	}
	return nil
}

// ethernetDevice checks that dev exists in this namespace and is an
// Ethernet device, the framing AF_PACKET and AF_XDP links carry.
func ethernetDevice(dev string) error {
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		return fmt.Errorf("interface %q: %w in this network namespace (%w): list them with `ip link`; for another namespace, run under `ip netns exec NS`", dev, ErrNoInterface, err)
	}
	if ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
		return fmt.Errorf("interface %q is not Ethernet (loopback, TUN or another raw-IP device): %w for AF_PACKET and AF_XDP; use --driver tun for a TUN device", dev, ErrUnsupported)
	}
	if ifc.Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %q is down: bring it up first (ip link set %s up)", dev, dev)
	}
	return nil
}

// classify wraps a driver's error in the sentinel that says what went
// wrong; the driver's own message (which already says what to do) stays.
func classify(driver, dev string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s on %q: %w: %w", driver, dev, ErrNotRoot, err)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%s on %q: %w: %w", driver, dev, ErrNoInterface, err)
	case errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTSUP),
		errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, netif.ErrNotSteerable), errors.Is(err, afxdp.ErrZeroCopy):
		return fmt.Errorf("%s on %q: %w by this kernel or device: %w", driver, dev, ErrUnsupported, err)
	}
	return fmt.Errorf("%s on %q: %w", driver, dev, err)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// capability is a Linux capability number.
type capability uint

const (
	capNetAdmin capability = 12
	capNetRaw   capability = 13
	capSysAdmin capability = 21
	capBPF      capability = 39
)

func (c capability) String() string {
	switch c {
	case capNetAdmin:
		return "CAP_NET_ADMIN"
	case capNetRaw:
		return "CAP_NET_RAW"
	case capSysAdmin:
		return "CAP_SYS_ADMIN"
	case capBPF:
		return "CAP_BPF"
	}
	return "CAP_" + strconv.Itoa(int(c))
}

// needCaps checks the effective capabilities before a driver fails deep
// inside a system call with a bare EPERM. CAP_SYS_ADMIN stands in for
// CAP_BPF, as the kernel lets it. If the capability set cannot be read,
// the check is left to the system calls (whose EPERM classify turns into
// ErrNotRoot).
func needCaps(driver string, caps ...capability) error {
	eff, err := effectiveCaps()
	if err != nil {
		return nil
	}
	var missing []string
	for _, c := range caps {
		has := eff&(1<<c) != 0
		if c == capBPF && eff&(1<<capSysAdmin) != 0 {
			has = true
		}
		if !has {
			missing = append(missing, c.String())
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("driver %s: %w (missing %s): run as root, e.g. with sudo", driver, ErrNotRoot, strings.Join(missing, ", "))
}

// effectiveCaps reads the calling thread's effective capability set.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/thread-self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CapEff line in /proc/thread-self/status")
}
