// Package tun is a [netif.Link] on a Linux TUN device (docs/design.md §9): raw IP
// frames (packet.RawIP), read and written with a virtio-net header
// (IFF_VNET_HDR) so that GSO/GRO super packets cross the device whole in
// both directions.
//
// Super packets. With offloads on (the default) the device advertises
// checksum, TSO4/TSO6 and, where the kernel takes it, USO4/USO6 offload, so
// the kernel hands over TCP (and UDP-GSO) super packets of up to
// [Link.MaxSuperPacketLen] bytes instead of MTU-sized segments, and takes
// ours the same way:
//
//   - Read: a TCP super packet is delivered whole when the caller's buffer
//     holds it, as one valid packet (IP length covering it all, checksums
//     complete), as if GRO had built it; otherwise the driver splits it into
//     MTU-sized segments into the following buffers (and later Read calls,
//     if the batch runs out). A UDP super packet is always split into its
//     datagrams: delivered whole it would be one datagram nobody sent.
//     Callers that take super packets pass buffers of MaxSuperPacketLen
//     bytes; callers that do not pass MTU-sized buffers and always get
//     segments. Either way a partial checksum (NEEDS_CSUM) is completed:
//     what Read returns always verifies.
//   - Write: a TCP frame longer than the MTU (up to MaxSuperPacketLen) is
//     sent as one GSO packet; the kernel segments it with a payload per
//     segment that makes each segment MTU bytes long. [Link.WriteGSO] names
//     the segment size per frame instead, and is the only way to send a UDP
//     super packet (USO), whose segment size is the datagram size. Frames up
//     to the MTU go out as they are: their checksums are the caller's.
//
// MTU stays the L3 MTU of the device; MaxSuperPacketLen is the extension.
// Link implements [netif.SuperPacketLink], whose doc is the full contract.
// The netif contract is otherwise unchanged: buffers stay the caller's,
// Write never blocks (a full device tail-drops, counted), one reader and one
// writer may run at once, Close unblocks Wait.
//
// Invariants:
//
//   - The fd is nonblocking and lives in Go's poller, so Wait honours its
//     timeout and Close unblocks it; nothing else ever blocks.
//   - Read makes one read(2) per frame from the device; a super packet in
//     the middle of being split is held in the driver's own buffer, never in
//     the caller's, and finishes before the next frame is read.
//   - Write never modifies the caller's frames: a GSO frame's headers are
//     patched in a copy and sent with writev(2) ahead of the caller's
//     payload.
//   - The device exists as long as the Link: it is not persistent, so
//     closing the fd (Close, or the process dying) removes it.
package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
	"github.com/skylane/skylane/packet"
)

// Defaults and limits of Options.
const (
	DefaultMTU = 1500
	// MinMTU is the smallest MTU an IPv4 host must accept (RFC 791).
	MinMTU = 68
	// MaxMTU is the largest IP packet the 16-bit length field describes.
	MaxMTU = 65535
	// MaxSuperPacketLen is the largest super packet either direction
	// carries: the kernel's legacy GSO limit (GSO_LEGACY_MAX_SIZE, 64 KiB)
	// is bounded here by the IP length field, as BIG TCP is not enabled.
	MaxSuperPacketLen = 65535
	// DefaultBatchSize matches memif's: 32 frames per Read or Write.
	DefaultBatchSize = 32

	devicePath = "/dev/net/tun"
	// rxBufLen holds the largest frame the device may hand over, with its
	// virtio header: a super packet, or an MTU-sized packet up to MaxMTU.
	rxBufLen = vnet.HdrLen + MaxSuperPacketLen
	// maxHdrs is the most header bytes PrepareGSO copies: a 60-byte IPv4
	// header (or IPv6's 40) and a 60-byte TCP header.
	maxHdrs = 60 + 60
)

// Options configure a TUN link. The zero value asks the kernel for a name
// (tunN), MTU 1500, offloads on, no addresses.
type Options struct {
	// Name of the device, at most 15 bytes; empty lets the kernel choose.
	Name string
	// MTU is the L3 MTU, MinMTU..MaxMTU. Default DefaultMTU.
	MTU int
	// DisableOffloads leaves checksum and segmentation offloads off: the
	// kernel then hands over only MTU-sized packets with complete
	// checksums, and Write accepts only frames up to the MTU.
	DisableOffloads bool
	// Addrs are assigned to the device (the kernel's side of it) once it is
	// up, e.g. 198.18.1.1/24 to route 198.18.1.0/24 into the device. IPv6
	// addresses get no duplicate address detection, and New returns only
	// once the kernel routes them to itself, so they work at once.
	Addrs []netip.Prefix
	// BatchSize is what BatchSize reports. Default DefaultBatchSize.
	BatchSize int
}

// Link is a TUN device. It implements netif.Link and adds MaxSuperPacketLen,
// WriteGSO and Offloads.
type Link struct {
	// Immutable after New.
	f        *os.File
	rc       syscall.RawConn
	name     string
	mtu      int
	batch    int
	offloads uint // TUN_F_* the kernel accepted; 0 with DisableOffloads
	maxSuper int  // MaxSuperPacketLen with TSO, else mtu
	ifIndex  int
	closed   atomic.Bool
	stats    counters
	rxr      reader // owned by the reader goroutine (Read, Wait)
	txw      writer // owned by the writer goroutine (Write, WriteGSO)
	// Callbacks for the raw conn, bound once in New so that no call
	// allocates a closure. Immutable.
	readFn, waitFn, writeFn func(uintptr) bool
}

var (
	_ netif.Link            = (*Link)(nil)
	_ netif.SuperPacketLink = (*Link)(nil)
)

// counters are updated by the reader and writer goroutines and read by
// Stats from any goroutine.
type counters struct {
	rxPackets, rxBytes, rxDrops atomic.Uint64
	txPackets, txBytes, txDrops atomic.Uint64
}

// reader is the state of the reading side.
type reader struct {
	buf   []byte        // rxBufLen: a frame read when the caller's buffer may not hold a super packet
	hdr   vnet.Hdr      // header of the frame in buf
	split vnet.Splitter // a super packet in buf being split
	iov   [2]unix.Iovec

	// Read's and Wait's arguments and results, for their callbacks.
	bufs   [][]byte
	sizes  []int
	n      int
	err    error
	waited bool
	pfd    [1]unix.PollFd
}

// writer is the state of the writing side.
type writer struct {
	vh   [vnet.HdrLen + maxHdrs]byte // virtio header, then (for GSO) the patched headers
	zero [vnet.HdrLen]byte           // the header of a frame sent as is
	iov  [2]unix.Iovec

	// WriteGSO's arguments and results, for its callback.
	frames      [][]byte
	segSizes    []int
	i           int
	sent, bytes uint64
	err         error
}

// New creates a TUN device in the network namespace of the calling thread
// (use nettest.NS.Do or a locked thread to choose one), sets its MTU,
// brings it up and assigns opts.Addrs. Every option is checked before any
// system call. It needs CAP_NET_ADMIN.
func New(opts Options) (*Link, error) {
	if opts.MTU == 0 {
		opts.MTU = DefaultMTU
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = DefaultBatchSize
	}
	switch {
	case len(opts.Name) >= unix.IFNAMSIZ:
		return nil, fmt.Errorf("tun: name %q longer than %d bytes", opts.Name, unix.IFNAMSIZ-1)
	case opts.MTU < MinMTU || opts.MTU > MaxMTU:
		return nil, fmt.Errorf("tun: MTU %d outside %d..%d", opts.MTU, MinMTU, MaxMTU)
	case opts.BatchSize < 0:
		return nil, fmt.Errorf("tun: negative BatchSize %d", opts.BatchSize)
	}
	for _, p := range opts.Addrs {
		if !p.IsValid() {
			return nil, fmt.Errorf("tun: invalid address prefix %v", p)
		}
	}

	fd, err := unix.Open(devicePath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
			return nil, fmt.Errorf("tun: open %s: %w (load the tun module: modprobe tun; or create the node: mknod %s c 10 200)", devicePath, err, devicePath)
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("tun: open %s: %w (needs root or CAP_NET_ADMIN)", devicePath, err)
		}
		return nil, fmt.Errorf("tun: open %s: %w", devicePath, err)
	}
	l := &Link{mtu: opts.MTU, batch: opts.BatchSize}
	ok := false
	defer func() {
		if !ok {
			if l.f != nil {
				l.f.Close()
			} else {
				unix.Close(fd)
			}
		}
	}()
	if err := l.setup(fd, &opts); err != nil {
		return nil, err
	}
	l.f = os.NewFile(uintptr(fd), devicePath) // nonblocking: joins the poller
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tun %s: raw conn: %w", l.name, err)
	}
	l.rc = rc
	if err := l.configure(&opts); err != nil {
		return nil, err
	}
	l.rxr.buf = make([]byte, rxBufLen)
	l.readFn, l.waitFn, l.writeFn = l.readBatch, l.waitOnce, l.writeBatch
	ok = true
	return l, nil
}

// offloadSets are tried in order: the first the kernel accepts wins. USO is
// the newest (Linux 6.2) and the first to be refused by an older kernel;
// TSO needs CSUM.
var offloadSets = [...]uint{
	unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6,
	unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6,
	unix.TUN_F_CSUM,
}

// setup turns fd into a TUN device with a virtio header and offloads.
func (l *Link) setup(fd int, opts *Options) error {
	ifr, err := unix.NewIfreq(opts.Name)
	if err != nil {
		return fmt.Errorf("tun: name %q: %w", opts.Name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		switch {
		case errors.Is(err, unix.EPERM):
			return fmt.Errorf("tun: create device %q: %w (needs root or CAP_NET_ADMIN)", opts.Name, err)
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EINVAL):
			return fmt.Errorf("tun: create device %q: %w (is the name taken by another device?)", opts.Name, err)
		}
		return fmt.Errorf("tun: create device %q: %w", opts.Name, err)
	}
	l.name = ifr.Name()
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnet.HdrLen); err != nil {
		return fmt.Errorf("tun %s: set virtio header size: %w", l.name, err)
	}
	l.maxSuper = l.mtu
	if opts.DisableOffloads {
		// Explicitly 0: a device re-attached by name keeps old settings.
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
			return fmt.Errorf("tun %s: clear offloads: %w", l.name, err)
		}
		return nil
	}
	var lastErr error
	for _, set := range offloadSets {
		if lastErr = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(set)); lastErr == nil {
			l.offloads = set
			break
		}
	}
	if l.offloads == 0 {
		return fmt.Errorf("tun %s: set offloads (or set DisableOffloads): %w", l.name, lastErr)
	}
	if l.offloads&unix.TUN_F_TSO4 != 0 {
		l.maxSuper = max(l.mtu, MaxSuperPacketLen)
	}
	return nil
}

// configure sets the MTU, brings the device up and adds the addresses, over
// netlink in the calling thread's namespace.
func (l *Link) configure(opts *Options) error {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("tun %s: netlink: %w", l.name, err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(l.name)
	if err != nil {
		return fmt.Errorf("tun %s: find the new device: %w", l.name, err)
	}
	l.ifIndex = link.Attrs().Index
	if err := nl.LinkSetMTU(link, l.mtu); err != nil {
		return fmt.Errorf("tun %s: set MTU %d: %w", l.name, l.mtu, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("tun %s: set up: %w", l.name, err)
	}
	for _, p := range opts.Addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := nl.AddrAdd(link, a); err != nil {
			return fmt.Errorf("tun %s: add address %v: %w", l.name, p, err)
		}
	}
	for _, p := range opts.Addrs {
		if p.Addr().Is6() {
			if err := waitLocalRoute(nl, p.Addr()); err != nil {
				return fmt.Errorf("tun %s: address %v: %w", l.name, p, err)
			}
		}
	}
	return nil
}

// localRouteTimeout bounds the wait for an IPv6 address's local route: the
// kernel's address worker normally adds it within microseconds.
const localRouteTimeout = 2 * time.Second

// waitLocalRoute waits until the kernel routes a to itself. Even without
// duplicate address detection, an IPv6 address only gets its local route
// when the kernel's address worker runs (addrconf_dad_work), after AddrAdd
// returned; a packet to it that arrives first is dropped (Ip6InAddrErrors).
// This asks the route of a (one request, no dump) every millisecond until it
// is local: the wait is none or a few polls, which does not justify a
// route-notification subscription.
func waitLocalRoute(nl *netlink.Handle, a netip.Addr) error {
	deadline := time.Now().Add(localRouteTimeout)
	for {
		rs, err := nl.RouteGet(a.AsSlice())
		if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no local route")
			}
			return fmt.Errorf("not usable after %v (is IPv6 disabled on the device?): %w", localRouteTimeout, err)
		}
		time.Sleep(time.Millisecond) // polled: see above
	}
}

// Name implements netif.Link.Name: the device's name.
func (l *Link) Name() string { return l.name }

// Index is the device's interface index in its namespace.
func (l *Link) Index() int { return l.ifIndex }

// MTU implements netif.Link.MTU.
func (l *Link) MTU() int { return l.mtu }

// LinkType implements netif.Link.LinkType: raw IP.
func (l *Link) LinkType() packet.LinkType { return packet.RawIP }

// BatchSize implements netif.Link.BatchSize.
func (l *Link) BatchSize() int { return l.batch }

// MaxSuperPacketLen implements netif.SuperPacketLink.MaxSuperPacketLen:
// the longest frame Read delivers whole (to a buffer that long) and Write
// accepts as a super packet: 65535 with offloads, the MTU without.
// Immutable.
func (l *Link) MaxSuperPacketLen() int { return l.maxSuper }

// Offloads returns the TUN_F_* flags the kernel accepted (0 with
// DisableOffloads). USO is missing on kernels before 6.2.
func (l *Link) Offloads() uint { return l.offloads }

// Stats implements netif.Link.Stats. A segment of a split super packet is
// one frame.
func (l *Link) Stats() netif.Stats {
	c := &l.stats
	return netif.Stats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(), RxDrops: c.rxDrops.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(), TxDrops: c.txDrops.Load(),
	}
}

// Close implements netif.Link.Close. Closing the fd removes the device.
func (l *Link) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("tun %s: close: %w", l.name, err)
	}
	return nil
}

// closedErr maps an error from the file after Close to netif.ErrClosed.
func (l *Link) closedErr(err error) error {
	if l.closed.Load() || errors.Is(err, os.ErrClosed) {
		return netif.ErrClosed
	}
	return fmt.Errorf("tun %s: %w", l.name, err)
}
