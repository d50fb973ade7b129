// Package afpacket is a [netif.Link] on an AF_PACKET socket bound to one
// interface (docs/design.md §9): Ethernet frames, received through a TPACKET_V3
// mmapped ring and sent through a TPACKET_V3 transmit ring (or sendmmsg).
// It works on any interface and is the portable fallback where AF_XDP is
// missing.
//
// AF_PACKET only taps. The kernel's own stack also receives every frame the
// Link reads, and answers it as it sees fit (a TCP RST for a port it has no
// socket on, an ICMP port unreachable for UDP). For a user-space stack to
// own flows on an interface the kernel also has addresses on, the kernel
// must ignore those flows: with Options.Steer the Link attaches a TC
// ingress BPF program (netif/steer, TCX) that drops the frames of the flows
// registered through [Link.SteerFlow], after the Link's tap has seen them
// (taps run before TC ingress), and passes everything else. The Link is a
// netif.FlowSteerer, as the AF_XDP link is. With no kernel address on the
// interface (the user-space stack alone answers there), the kernel drops
// the frames by itself and steering is not needed.
//
// Receive. The ring is NumBlocks blocks of BlockSize bytes. The kernel fills
// a block with frames and hands it over when it is full or RetireTimeout
// after its first frame (1 ms by default: the latency a frame may wait).
// Read copies frames out and gives each block back once all its frames are
// out. Every block and frame header is bounds-checked before use
// (blockIter): a bad one costs its block's remaining frames, counted in
// RxDrops, never a read outside the ring.
//
// Super packets. The socket uses PACKET_VNET_HDR, so every received frame
// carries a virtio-net header: a GRO/GSO super packet (from a veth peer's
// TSO, or the NIC's GRO) arrives whole, up to MaxSuperPacketLen, with its
// segment size. As on TUN, Read delivers a TCP super packet whole, with its
// checksum completed, into a buffer that holds it, and splits it into
// MTU-sized segments otherwise; a UDP one it always splits into its
// datagrams. On transmit, a TCP frame longer than MaxFrameLen given to
// Write, and any super packet given to WriteGSO, goes to the kernel as one
// packet with a GSO virtio header, and the kernel (or the NIC) segments it.
// The Link implements [netif.SuperPacketLink], whose doc is the contract.
//
// Transmit. TxRing (the default) copies each frame into a slot of the
// transmit ring and kicks the kernel with one send(2) per batch; TxSendmmsg
// hands the batch to sendmmsg(2) instead. Both are one system call per
// batch; on veth here (BenchmarkWrite, batch 32, 2 shared cores) the ring
// sends 1514-byte frames ~25% faster (≈0.49 vs ≈0.39 Mpps) and 64-byte
// frames within noise of sendmmsg (≈0.6 Mpps each: the per-skb cost in the
// kernel dominates), so the ring is the default. QdiscBypass changed
// little on veth (its qdisc is noqueue). A full ring tail-drops, counted
// in TxDrops.
//
// A super packet is one sendmsg(2) of its own, with its virtio header: 64
// KiB ring slots would make the ring 32 times larger for frames that are
// mostly MTU-sized. In TxSendmmsg mode it goes on the Link's socket; in
// TxRing mode on a second, send-only packet socket, because a socket with a
// transmit ring ignores the data of sendmsg. Order is kept across the two:
// the ring is flushed first, and a super packet that would overtake frames
// still waiting in the ring is tail-dropped instead (counted).
//
// Invariants:
//
//   - PACKET_IGNORE_OUTGOING is set: Read never sees the Link's own sends.
//   - With Steer, the TC program and an owned flow map live exactly as long
//     as the Link: New releases them on every failure, Close detaches them,
//     and a process that dies detaches them through its fds (a TCX link).
//   - The interface is not put in promiscuous mode unless Options asks.
//   - The ring mapping outlives every Read, Write and Wait: Close closes the
//     socket first (unblocking Wait), then waits for them to return before
//     unmapping.
//   - Concurrency follows netif: one reader (Read, Wait) and one writer
//     (Write) at once; Stats and Close from anywhere.
package afpacket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

// TxMode chooses how Write hands frames to the kernel.
type TxMode uint8

const (
	// TxRing copies frames into the mmapped TPACKET_V3 transmit ring and
	// kicks the kernel with one send(2) per batch.
	TxRing TxMode = iota
	// TxSendmmsg sends the batch with one sendmmsg(2).
	TxSendmmsg
)

// Defaults and limits of Options.
const (
	// DefaultBlockSize holds a 64 KiB super packet with its headers; at 1500
	// bytes per frame it is ~170 frames per block.
	DefaultBlockSize = 256 << 10
	// DefaultNumBlocks gives 4 MiB of receive ring: ~2700 full-sized frames,
	// about 2 ms at 10 Gbit/s.
	DefaultNumBlocks = 16
	// DefaultRetireTimeout bounds how long a frame waits in a block that is
	// not full: the kernel's timer counts in milliseconds, 1 is its least.
	DefaultRetireTimeout = time.Millisecond
	// DefaultTxFrames is the transmit ring's slots (or sendmmsg's batch
	// limit): room for 1024 frames in flight.
	DefaultTxFrames  = 1024
	DefaultBatchSize = 32

	// txDataOff is where a transmit slot's data starts: the kernel reads
	// it at TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) (tp_hdrlen minus
	// sockaddr_ll), when PACKET_TX_HAS_OFF is off.
	txDataOff = frameHdrLen
	// ringFrameSize is the nominal frame size given with the RX ring;
	// TPACKET_V3 packs frames of any size into blocks, and the kernel only
	// checks that blocks divide into frames of this size.
	ringFrameSize = 2048
)

// Options configure an AF_PACKET link.
type Options struct {
	// Interface is the name of the interface to bind, in the calling
	// thread's network namespace. Required.
	Interface string
	// MTU is the L3 MTU the Link reports. Default: the interface's.
	MTU int
	// BlockSize is the receive ring's block size: a power of two, a multiple
	// of the page size, at least 128 KiB so a 64 KiB super packet fits.
	// Default DefaultBlockSize.
	BlockSize int
	// NumBlocks is how many blocks the receive ring has. Default
	// DefaultNumBlocks.
	NumBlocks int
	// RetireTimeout is how long the kernel waits before handing over a
	// block that is not full, rounded up to whole milliseconds. Default
	// DefaultRetireTimeout.
	RetireTimeout time.Duration
	// TxMode chooses the transmit path. Default TxRing.
	TxMode TxMode
	// TxFrames is the transmit ring's slot count (rounded up to fill whole
	// ring blocks), or the largest sendmmsg batch. Default DefaultTxFrames.
	TxFrames int
	// QdiscBypass sends straight to the driver, skipping the interface's
	// qdisc (PACKET_QDISC_BYPASS): faster, but no traffic control and no
	// back-pressure from it.
	QdiscBypass bool
	// Promiscuous puts the interface in promiscuous mode for as long as the
	// socket is open (a membership, undone by the kernel on close).
	Promiscuous bool
	// BatchSize is what BatchSize reports. Default DefaultBatchSize.
	BatchSize int
	// Steer attaches the TC ingress program (netif/steer) that keeps the
	// flows registered with SteerFlow from the kernel's stack. Set it when
	// the interface has kernel addresses and user space owns flows on it;
	// without it the kernel answers those flows too. It needs CAP_BPF and
	// CAP_NET_ADMIN and Linux 6.6 (TCX). Off by default, rather than on
	// whenever the interface has addresses: addresses come and go after
	// New, an AF_PACKET link is also a plain tap, and what New needs
	// (privileges, kernel version) should not depend on the interface's
	// state.
	Steer bool
	// Flows is the flow map the TC program drops by, with Steer: several
	// links (AF_PACKET on other interfaces, AF_XDP) may share one, and the
	// caller closes it after them. Nil makes one the Link owns.
	Flows *steer.Flows
}

// Link is an AF_PACKET socket bound to one interface. It implements
// netif.Link, netif.SuperPacketLink and netif.FlowSteerer, and adds
// HardwareAddr, Index and Counters.
type Link struct {
	// Immutable after New.
	name     string
	ifindex  int
	mac      net.HardwareAddr
	mtu      int
	maxFrame int // netif.MaxFrameLen(mtu, Ethernet)
	maxSuper int // largest frame a block holds whole
	batch    int
	txMode   TxMode
	f        *os.File
	rc       syscall.RawConn
	ring     []byte // the mapping: RX blocks, then TX blocks (TxRing)
	rx       [][]byte
	tx       [][]byte // TxRing slots, each txSlot bytes
	gsoFd    int      // TxRing: the send-only socket for super packets; -1 otherwise
	tc       *steer.TC
	flows    *steer.Flows
	ownFlows bool // flows was made by New, and is closed by Close

	closed atomic.Bool
	// mu keeps the mapping, gsoFd and the steering alive: Read, Write,
	// Wait and SteerFlow hold it shared; Close takes it exclusively, after
	// closing the socket, to release them.
	mu    sync.RWMutex
	stats counters
	rxr   reader // owned by the reader goroutine
	txw   writer // owned by the writer goroutine
	// Callbacks for the raw conn, bound once in New so that no call
	// allocates a closure. Immutable.
	waitFn, kickFn, mmsgFn, gsoFn func(uintptr) bool
}

var (
	_ netif.Link            = (*Link)(nil)
	_ netif.SuperPacketLink = (*Link)(nil)
)

type counters struct {
	rxPackets, rxBytes, rxDrops atomic.Uint64
	txPackets, txBytes, txDrops atomic.Uint64
	kernelDrops                 atomic.Uint64 // PACKET_STATISTICS drops, summed
}

// reader is the receive side's state.
type reader struct {
	blk    int  // the block Read looks at next
	active bool // iter walks rx[blk], which user space holds
	iter   blockIter
	hdr    vnet.Hdr
	split  vnet.Splitter // a super packet being split
	buf    []byte        // a frame with its VLAN tag put back, being split
	waited bool          // Wait's callback was called once
}

// writer is the transmit side's state.
type writer struct {
	head int // next TX ring slot
	mmsg []mmsghdr
	iov  []unix.Iovec // two per message: the virtio header, the frame
	zero [vnet.HdrLen]byte

	// A super packet being sent: the virtio header and the frame's headers
	// patched for the kernel (vh), then the rest of the frame (payload).
	vh      [vnet.HdrLen + maxGSOHdrs]byte
	gsoMsg  unix.Msghdr
	gsoIov  [2]unix.Iovec
	gsoHdr  []byte
	payload []byte

	// Write's arguments and results, for its callbacks.
	frames [][]byte
	n      int
	bytes  uint64
	errno  unix.Errno
}

// New opens an AF_PACKET socket on opts.Interface in the calling thread's
// network namespace, maps its rings and binds it. It needs CAP_NET_RAW
// (root). Every option is checked before the socket is made.
func New(opts Options) (*Link, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.NumBlocks == 0 {
		opts.NumBlocks = DefaultNumBlocks
	}
	if opts.RetireTimeout == 0 {
		opts.RetireTimeout = DefaultRetireTimeout
	}
	if opts.TxFrames == 0 {
		opts.TxFrames = DefaultTxFrames
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = DefaultBatchSize
	}
	page := os.Getpagesize()
	switch {
	case opts.Interface == "":
		return nil, errors.New("afpacket: Options.Interface is required")
	case opts.BlockSize < 128<<10 || opts.BlockSize&(opts.BlockSize-1) != 0 || opts.BlockSize%page != 0:
		return nil, fmt.Errorf("afpacket: BlockSize %d is not a power of two ≥ 128 KiB", opts.BlockSize)
	case opts.NumBlocks < 2 || opts.NumBlocks > 4096:
		return nil, fmt.Errorf("afpacket: NumBlocks %d outside 2..4096", opts.NumBlocks)
	case opts.RetireTimeout < 0 || opts.RetireTimeout > time.Second:
		return nil, fmt.Errorf("afpacket: RetireTimeout %v outside 0..1s", opts.RetireTimeout)
	case opts.TxFrames < 1 || opts.TxFrames > 1<<16:
		return nil, fmt.Errorf("afpacket: TxFrames %d outside 1..65536", opts.TxFrames)
	case opts.TxMode > TxSendmmsg:
		return nil, fmt.Errorf("afpacket: unknown TxMode %d", opts.TxMode)
	case opts.BatchSize < 0:
		return nil, fmt.Errorf("afpacket: negative BatchSize %d", opts.BatchSize)
	case opts.MTU < 0 || opts.MTU > 65535:
		return nil, fmt.Errorf("afpacket: MTU %d outside 0..65535", opts.MTU)
	case opts.Flows != nil && !opts.Steer:
		return nil, errors.New("afpacket: Options.Flows is set but Steer is not: set Steer to steer by it")
	}
	ifi, err := net.InterfaceByName(opts.Interface)
	if err != nil {
		return nil, fmt.Errorf("afpacket: no interface %q in this network namespace: %w", opts.Interface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("afpacket: %s is not an Ethernet interface (hardware address %q)", ifi.Name, ifi.HardwareAddr)
	}
	l := &Link{
		name: ifi.Name, ifindex: ifi.Index, mac: ifi.HardwareAddr,
		mtu: opts.MTU, batch: opts.BatchSize, txMode: opts.TxMode, gsoFd: -1,
	}
	if l.mtu == 0 {
		l.mtu = ifi.MTU
	}
	l.maxFrame = netif.MaxFrameLen(l.mtu, packet.Ethernet)
	// A frame's data starts after the frame header, up to 16 bytes of
	// alignment and the virtio header (tpacket_rcv's netoff).
	l.maxSuper = min(opts.BlockSize-blockHdrLen-frameHdrLen-16-vnet.HdrLen, 65535+netif.EthernetHeaderLen)

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("afpacket: socket: %w (needs root or CAP_NET_RAW)", err)
		}
		return nil, fmt.Errorf("afpacket: socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			l.release(fd)
		}
	}()
	if err := l.setup(fd, &opts); err != nil {
		return nil, err
	}
	l.f = os.NewFile(uintptr(fd), "afpacket:"+l.name) // nonblocking: joins the poller
	if l.rc, err = l.f.SyscallConn(); err != nil {
		return nil, fmt.Errorf("afpacket %s: raw conn: %w", l.name, err)
	}
	if opts.Steer {
		// Last: nothing after it can fail, so a Link that fails to open
		// has attached nothing (release would detach it anyway).
		if err := l.setupSteer(&opts); err != nil {
			return nil, err
		}
	}
	l.rxr.buf = make([]byte, l.maxSuper+4)
	l.waitFn, l.kickFn, l.mmsgFn, l.gsoFn = l.waitOnce, l.kickRing, l.sendBatch, l.sendSuper
	ok = true
	return l, nil
}

// release undoes what New did when it fails.
func (l *Link) release(fd int) {
	_ = l.releaseSteer()
	if l.f != nil {
		l.f.Close()
	} else {
		unix.Close(fd)
	}
	if l.gsoFd >= 0 {
		unix.Close(l.gsoFd)
		l.gsoFd = -1
	}
	if l.ring != nil {
		_ = unix.Munmap(l.ring)
		l.ring = nil
	}
}

// setup configures the socket: version, virtio header, options, rings,
// mapping, then bind (so no frame arrives before the ring exists).
func (l *Link) setup(fd int, o *Options) error {
	set := func(what string, opt, v int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, opt, v); err != nil {
			return fmt.Errorf("afpacket %s: %s: %w", l.name, what, err)
		}
		return nil
	}
	if err := set("TPACKET_V3", unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return err
	}
	if err := set("PACKET_VNET_HDR", unix.PACKET_VNET_HDR, 1); err != nil {
		return err
	}
	// Skip a malformed transmit slot instead of stalling the ring on it.
	if err := set("PACKET_LOSS", unix.PACKET_LOSS, 1); err != nil {
		return err
	}
	if err := set("PACKET_IGNORE_OUTGOING", unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return err
	}
	if o.QdiscBypass {
		if err := set("PACKET_QDISC_BYPASS", unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return err
		}
	}
	tov := uint32((o.RetireTimeout + time.Millisecond - 1) / time.Millisecond)
	rxReq := unix.TpacketReq3{
		Block_size: uint32(o.BlockSize), Block_nr: uint32(o.NumBlocks),
		Frame_size: ringFrameSize, Frame_nr: uint32(o.BlockSize / ringFrameSize * o.NumBlocks),
		Retire_blk_tov: tov,
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &rxReq); err != nil {
		return fmt.Errorf("afpacket %s: receive ring of %d × %d bytes: %w", l.name, o.NumBlocks, o.BlockSize, err)
	}
	rxLen := o.BlockSize * o.NumBlocks
	total := rxLen
	var txReq unix.TpacketReq3
	slot := 0
	if o.TxMode == TxRing {
		// A slot holds the frame header, the virtio header and the frame,
		// rounded up to a power of two so slots divide the blocks.
		slot = 1 << bitsFor(txDataOff+vnet.HdrLen+l.maxFrame)
		blockSize := max(slot, 64<<10)
		perBlock := blockSize / slot
		blocks := (o.TxFrames + perBlock - 1) / perBlock
		txReq = unix.TpacketReq3{Block_size: uint32(blockSize), Block_nr: uint32(blocks),
			Frame_size: uint32(slot), Frame_nr: uint32(blocks * perBlock)}
		if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &txReq); err != nil {
			return fmt.Errorf("afpacket %s: transmit ring: %w", l.name, err)
		}
		total += blockSize * blocks
		// Every requested slot becomes an skb charged to the socket's send
		// buffer until the device frees it; a buffer smaller than the ring
		// makes the kernel stop sending mid-ring (EAGAIN). Make it the
		// ring's size; SO_SNDBUFFORCE (root) passes wmem_max.
		sz := blockSize * blocks
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sz) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sz)
		}
	}
	ring, err := unix.Mmap(fd, 0, total, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("afpacket %s: map %d bytes of ring: %w", l.name, total, err)
	}
	l.ring = ring
	l.rx = make([][]byte, o.NumBlocks)
	for i := range l.rx {
		l.rx[i] = ring[i*o.BlockSize : (i+1)*o.BlockSize : (i+1)*o.BlockSize]
	}
	if o.TxMode == TxRing {
		n := int(txReq.Frame_nr)
		l.tx = make([][]byte, n)
		for i := range l.tx {
			off := rxLen + i*slot
			l.tx[i] = ring[off : off+slot : off+slot]
		}
		if err := l.openGSOSocket(o); err != nil {
			return err
		}
	} else {
		l.txw.mmsg = make([]mmsghdr, o.TxFrames)
		l.txw.iov = make([]unix.Iovec, 2*o.TxFrames)
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("afpacket %s: bind: %w", l.name, err)
	}
	if o.Promiscuous {
		mr := unix.PacketMreq{Ifindex: int32(l.ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr); err != nil {
			return fmt.Errorf("afpacket %s: promiscuous mode: %w", l.name, err)
		}
	}
	return nil
}

// bitsFor is the least b with 1<<b >= n.
func bitsFor(n int) int {
	b := 0
	for 1<<b < n {
		b++
	}
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

var _ netif.KernelTap = (*Link)(nil)

// KernelGetsCopies implements netif.KernelTap: an AF_PACKET socket is a
// tap, so the kernel's stack receives every frame Read returns except
// those the TC program drops for a steered flow (or, in tap mode, any
// frame it has no use for, which is the kernel's business, not a drop of
// ours).
func (l *Link) KernelGetsCopies() bool { return true }

// Name implements netif.Link.Name: the interface's name.
func (l *Link) Name() string { return l.name }

// Index is the interface's index in its namespace.
func (l *Link) Index() int { return l.ifindex }

// HardwareAddr is the interface's MAC address: the source of every frame
// the nexus builds for this link.
func (l *Link) HardwareAddr() net.HardwareAddr { return l.mac }

// MTU implements netif.Link.MTU.
func (l *Link) MTU() int { return l.mtu }

// LinkType implements netif.Link.LinkType: Ethernet.
func (l *Link) LinkType() packet.LinkType { return packet.Ethernet }

// BatchSize implements netif.Link.BatchSize.
func (l *Link) BatchSize() int { return l.batch }

// MaxSuperPacketLen implements netif.SuperPacketLink.MaxSuperPacketLen:
// the longest frame Read delivers whole, to a buffer that long, and Write
// and WriteGSO send as a super packet: an IP packet of up to 65535 bytes
// with its Ethernet header and one VLAN tag. Immutable.
func (l *Link) MaxSuperPacketLen() int { return l.maxSuper }

// Stats implements netif.Link.Stats. RxDrops includes the frames the kernel
// dropped because the ring was full (PACKET_STATISTICS).
func (l *Link) Stats() netif.Stats {
	c := &l.stats
	if !l.closed.Load() {
		_ = l.rc.Control(func(fd uintptr) {
			// Reading the statistics resets them: sum them up here.
			if st, err := unix.GetsockoptTpacketStatsV3(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
				c.kernelDrops.Add(uint64(st.Drops))
			}
		})
	}
	return netif.Stats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		RxDrops:   c.rxDrops.Load() + c.kernelDrops.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(), TxDrops: c.txDrops.Load(),
	}
}

// Close implements netif.Link.Close.
func (l *Link) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	err := l.f.Close() // unblocks a Wait, which then lets go of mu
	l.mu.Lock()
	defer l.mu.Unlock()
	if merr := unix.Munmap(l.ring); merr != nil && err == nil {
		err = merr
	}
	l.ring, l.rx, l.tx = nil, nil, nil
	if l.gsoFd >= 0 {
		if cerr := unix.Close(l.gsoFd); cerr != nil && err == nil {
			err = cerr
		}
		l.gsoFd = -1
	}
	if err != nil {
		err = fmt.Errorf("afpacket %s: close: %w", l.name, err)
	}
	// Steering goes last: detached while the socket still read, the
	// kernel stack would answer (reset) flows user space still owns.
	return errors.Join(err, l.releaseSteer())
}

// lock takes the mapping (and the steering) for a Read, Write, Wait or
// SteerFlow; false once closed.
func (l *Link) lock() bool {
	l.mu.RLock()
	if l.closed.Load() {
		l.mu.RUnlock()
		return false
	}
	return true
}

func (l *Link) closedErr(err error) error {
	if l.closed.Load() || errors.Is(err, os.ErrClosed) {
		return netif.ErrClosed
	}
	return fmt.Errorf("afpacket %s: %w", l.name, err)
}
