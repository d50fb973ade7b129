// Package afxdp is a netif.Link over an AF_XDP socket bound to one queue of
// a Linux network device (docs/design.md §9). An XDP program (netif/steer) sends
// the frames of the flows user space registered to the socket and passes
// every other frame to the kernel's stack, so both stacks share the device.
//
// Super packets (multi-buffer). Unless Options.SingleBuffer, the program is
// loaded frags-aware and the socket bound with XDP_USE_SG (Linux 6.6 for
// copy mode). In generic mode the kernel then hands XDP a GSO or GRO skb
// whole, as a multi-buffer frame (a veth peer with TSO sends 64 KiB ones),
// and the socket receives it as a chain of descriptors, each but the last
// flagged XDP_PKT_CONTD. The link is a netif.SuperPacketLink: Read
// assembles a chain into the caller's buffer and delivers a TCP super
// packet whole into a buffer of MaxSuperPacketLen bytes, split by
// netif/internal/vnet into MTU-sized segments for a shorter one. AF_XDP
// carries no GSO size, so a UDP super packet (USO), which must be split at
// its sender's datagram size, is dropped and counted (RxUDPSuper); TCP is
// a byte stream and any MSS splits it validly. In native mode a veth peer
// stops offering TSO to a device with an XDP program (veth_fix_features),
// so frames arrive wire-sized there. WriteGSO cannot hand the kernel a
// segmentation offload either: it cuts a super packet into MTU frames in
// software, straight into the UMEM.
//
// Partial checksums. An skb the kernel built with CHECKSUM_PARTIAL (a veth
// peer's transmit checksum offload, every GSO and GRO super packet) holds
// only the folded pseudo-header sum in its TCP/UDP checksum field, and
// AF_XDP gives no checksum status with the bytes (Linux 6.18 has no XDP
// metadata kfunc for it, and the metadata kfuncs need native mode). So
// Read recognises the state by its value: a checksum field equal to the
// pseudo-header sum of the packet's own addresses and length is completed
// over the payload (vnet.CompletePartial), counted in RxCsumCompleted. For
// a packet whose complete checksum happens to equal that sum, completion
// rewrites the same value; the residual risk is a packet corrupted on a
// wire whose checksum field happens to equal the pseudo-header sum (2^-16
// of corrupt packets, the same odds as any corruption that keeps the
// checksum valid), which then verifies. Super packets are always
// completed: they never crossed a wire, only the kernel built them. For
// wire-sized frames Options.Checksums decides; by default on a veth only,
// where no wire can corrupt a frame and a peer with offloads sends
// CHECKSUM_PARTIAL ones.
//
// Invariants:
//
//   - The UMEM is a pool.Pool buffer region of fixed size: page-multiple
//     segments divided into frames of FrameSize bytes. A frame's UMEM
//     address is its segment's I/O base plus its offset in the segment,
//     looked up once per segment (pool.AddrCache) when the link is opened.
//     The first RingSize frames are RX frames (in the fill ring, the RX
//     ring, or the link's free list), the next RingSize are TX frames.
//   - Read and Write copy (netif's ownership rule): no UMEM frame is ever
//     handed to a caller. Read recycles a frame to the fill ring as soon as
//     it is copied out.
//   - Everything read from the shared rings is checked before use: indices
//     that claim more entries than a ring holds count as none, descriptors
//     outside their frame are dropped and counted (Stats BadDescs), a chain
//     of more descriptors or bytes than a super packet may have is dropped
//     through its last descriptor and counted (BadChains); a bad value
//     never panics and never touches memory outside the UMEM.
//   - The reader (Read, Wait) and the writer (Write) each hold their own
//     lock, so they never contend with each other; Close takes both, after
//     waking Wait, so memory is never unmapped under a Read or Write.
//   - Close, and every failing Open, detach the XDP program (a BPF link),
//     close the socket and unmap every ring and the UMEM. A process that
//     dies releases the same through its fds: nothing stays attached.
//     After Export (a takeover, handover.go) the process that adopted the
//     duplicates holds them: Close then releases only this process's
//     descriptors and mappings, and the socket stays bound, the program
//     attached.
//   - Open acts in the network namespace of the calling OS thread.
package afxdp

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// Defaults and limits of Options.
const (
	DefaultFrameSize = 2048
	DefaultRingSize  = 2048 // frames per direction: 4 MiB of RX and 4 MiB of TX UMEM at 2 KiB
	MinRingSize      = 64
	MaxRingSize      = 16384
	// DefaultBindTimeout bounds the EBUSY retries of bind: a queue that
	// was bound moments ago stays busy for about 2 s while the kernel
	// releases the old socket's buffer pool.
	DefaultBindTimeout = 3 * time.Second
	// batchSize is what BatchSize reports: twice the 32 descriptors a
	// copy-mode sendto moves by default, so one Write costs at most two
	// kicks, and a batch of 1518-byte frames (96 KiB) still fits in L2.
	batchSize = 64
	// xdpPacketHeadroom is what the kernel keeps in front of a received
	// frame in its UMEM frame (XDP_PACKET_HEADROOM).
	xdpPacketHeadroom = 256
)

// Options configure a link. Interface is required.
type Options struct {
	// Interface is the device's name, in the calling thread's network
	// namespace.
	Interface string
	// Queue is the receive/transmit queue to bind. veth has only queue 0.
	Queue int
	// Mode is where the XDP program runs. Default steer.XDPGeneric.
	Mode steer.XDPMode
	// ZeroCopy asks for zero-copy (XDP_ZEROCOPY). When the driver cannot,
	// the link falls back to copy mode and ZeroCopyError says why; with
	// RequireZeroCopy set it fails instead. veth never offers zero-copy.
	ZeroCopy        bool
	RequireZeroCopy bool
	// FrameSize is the UMEM frame size: 2048 or 4096. A frame holds the
	// kernel's 256-byte headroom plus the largest frame (MTU + 18), so
	// 2048 serves MTUs up to 1774, 4096 up to 3822.
	FrameSize int
	// RingSize is the number of descriptors of each ring and the number of
	// UMEM frames per direction: a power of two, MinRingSize..MaxRingSize.
	// Default DefaultRingSize.
	RingSize int
	// Flows is the flow map the XDP program steers by. Several links (or a
	// link and an AF_PACKET TC program) may share one. Nil: the link makes
	// its own and closes it on Close.
	Flows *steer.Flows
	// BindTimeout bounds the retries of a bind that fails with EBUSY.
	// Default DefaultBindTimeout.
	BindTimeout time.Duration
	// SingleBuffer turns multi-buffer off: the XDP program is loaded
	// without frags and the socket bound without XDP_USE_SG, so a frame is
	// one UMEM frame and a super packet never arrives (the kernel drops
	// it, counted in KernelRxDropped). The link is then no super packet
	// link: MaxSuperPacketLen is MaxFrameLen.
	SingleBuffer bool
	// Checksums says what Read does with a wire-sized TCP/UDP frame whose
	// checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL:
	// see the package doc). Default ChecksumAuto.
	Checksums ChecksumMode
}

// ChecksumMode is Options.Checksums.
type ChecksumMode int

const (
	// ChecksumAuto completes partial checksums on a veth, whose peer hands
	// over CHECKSUM_PARTIAL packets, and leaves them elsewhere.
	ChecksumAuto ChecksumMode = iota
	// ChecksumComplete completes them on any device.
	ChecksumComplete
	// ChecksumLeave delivers wire-sized frames as they came.
	ChecksumLeave
)

func (m ChecksumMode) String() string {
	switch m {
	case ChecksumAuto:
		return "auto"
	case ChecksumComplete:
		return "complete"
	case ChecksumLeave:
		return "leave"
	}
	return fmt.Sprintf("ChecksumMode(%d)", int(m))
}

// Stats are the netif counters plus AF_XDP's own.
type Stats struct {
	netif.Stats
	BadDescs        uint64 // descriptors or ring indices from the kernel that failed their checks
	KickErrors      uint64 // sendto wake-ups that failed with something else than EAGAIN/EBUSY/ENOBUFS
	KernelRxDropped uint64 // XDP_STATISTICS rx_dropped: frames the kernel dropped (too long for a frame)
	KernelRxFull    uint64 // rx_ring_full: frames dropped because the RX ring was full
	KernelFillEmpty uint64 // rx_fill_ring_empty_descs: times the fill ring had no frame
	KernelTxInvalid uint64 // tx_invalid_descs
	BindRetries     uint64 // binds that failed with EBUSY before Open's succeeded

	RxSuperPackets  uint64 // frames longer than MaxFrameLen received (multi-buffer): delivered whole or split
	RxSuperSplit    uint64 // of those, split into segments for a buffer shorter than MaxSuperPacketLen
	RxCsumCompleted uint64 // partial checksums Read completed (super packets and, per Checksums, wire-sized frames)
	RxUDPSuper      uint64 // UDP super packets dropped: AF_XDP carries no datagram size to split them by
	RxBadSuper      uint64 // super packets dropped because they are not TCP/UDP over IP with headers that parse
	BadChains       uint64 // multi-buffer frames dropped: more descriptors or bytes than a frame may have
	TxSuperPackets  uint64 // super packets WriteGSO segmented in software
}

// Link is the AF_XDP link's own API beyond netif.Link.
type Link interface {
	netif.Link
	netif.SuperPacketLink
	netif.FlowSteerer
	// XDPStats returns Stats with the AF_XDP counters.
	XDPStats() Stats
	// ZeroCopy reports whether the socket is bound in zero-copy mode.
	ZeroCopy() bool
	// ZeroCopyError is why zero-copy was asked for and not obtained, or nil.
	ZeroCopyError() error
	// MultiBuffer reports whether the socket is bound with XDP_USE_SG.
	MultiBuffer() bool
	// CompletesChecksums reports whether Read completes the partial
	// checksums of wire-sized frames (Options.Checksums, resolved).
	CompletesChecksums() bool
	// Counters returns the XDP program's counters.
	Counters() (steer.Counters, error)
}

// Errors.
var (
	// ErrZeroCopy: zero-copy was required and the driver cannot do it.
	ErrZeroCopy = errors.New("afxdp: zero-copy unavailable")
	// ErrBusy: the queue stayed busy (EBUSY) for the whole BindTimeout.
	ErrBusy = errors.New("afxdp: queue busy")
)

type xlink struct {
	// Immutable after Open.
	name        string
	ifindex     int
	queue       int
	mtu         int
	maxFrame    int
	lay         layout
	umem        []byte
	zc          bool
	zcErr       error
	sg          bool // bound with XDP_USE_SG: frames may span descriptors
	maxSuper    int  // MaxSuperPacketLen: maxFrame without sg
	csumAll     bool // complete partial checksums of wire-sized frames too
	lim         rxLimits
	bindRetries uint64 // binds that met EBUSY before one succeeded
	ownFlows    bool
	flows       *steer.Flows
	xdp         *steer.XDP
	pool        *pool.Pool
	wake        *shm.EventFD // signalled by Close and Interrupt, unblocks Wait
	closed      atomic.Bool
	interrupted atomic.Bool // Interrupt signalled wake

	// fdMu guards the socket fd against Close for the callers that take
	// neither rxMu nor txMu (Stats); Read, Write and Wait hold their own
	// lock, which Close also takes, so the fd and rings stay valid there.
	fdMu       sync.RWMutex
	fd         int                // -1 once closed
	lastKernel unix.XDPStatistics // guarded by fdMu; the kernel's counters when the socket closed

	rxMu   sync.Mutex // the reader: Read, Wait
	rx     ring       // guarded by rxMu
	fill   ring       // guarded by rxMu
	rxFree []uint64   // guarded by rxMu; RX chunks waiting for room in the fill ring
	rxSkip bool       // guarded by rxMu; dropping the rest of a bad chain
	// A super packet being split for buffers too short for it: staged in
	// lim.stage, segments handed out across Read calls. Guarded by rxMu.
	split vnet.Splitter

	txMu    sync.Mutex // the writer: Write
	tx      ring       // guarded by txMu
	comp    ring       // guarded by txMu
	txFree  []uint64   // guarded by txMu; TX chunks ready to be filled
	txSuper vnet.Super // guarded by txMu; the super packet WriteGSO is cutting

	rxPackets, rxBytes, rxDrops atomic.Uint64
	txPackets, txBytes, txDrops atomic.Uint64
	badDescs, kickErrors        atomic.Uint64
	superRx, superSplit         atomic.Uint64
	csumDone, udpSuper          atomic.Uint64
	badSuper, badChains         atomic.Uint64
	superTx                     atomic.Uint64
}

var (
	_ netif.Link            = (*xlink)(nil)
	_ netif.SuperPacketLink = (*xlink)(nil)
	_ netif.FlowSteerer     = (*xlink)(nil)
	_ Link                  = (*xlink)(nil)
)

// Name implements netif.Link.Name.
func (l *xlink) Name() string { return l.name }

// MTU implements netif.Link.MTU.
func (l *xlink) MTU() int { return l.mtu }

// LinkType implements netif.Link.LinkType.
func (l *xlink) LinkType() packet.LinkType { return packet.Ethernet }

// BatchSize implements netif.Link.BatchSize.
func (l *xlink) BatchSize() int { return batchSize }

// ZeroCopy implements Link.ZeroCopy.
func (l *xlink) ZeroCopy() bool { return l.zc }

// ZeroCopyError implements Link.ZeroCopyError.
func (l *xlink) ZeroCopyError() error { return l.zcErr }

// MultiBuffer implements Link.MultiBuffer.
func (l *xlink) MultiBuffer() bool { return l.sg }

// CompletesChecksums implements Link.CompletesChecksums.
func (l *xlink) CompletesChecksums() bool { return l.csumAll }

// MaxSuperPacketLen implements netif.SuperPacketLink: with multi-buffer,
// an IP packet of up to 65535 bytes behind an Ethernet header (and a VLAN
// tag); without, MaxFrameLen.
func (l *xlink) MaxSuperPacketLen() int { return l.maxSuper }

// SteerFlow implements netif.FlowSteerer.SteerFlow: from now on the
// flow's frames come to Read instead of the kernel's stack.
func (l *xlink) SteerFlow(k packet.Key) error {
	if l.closed.Load() {
		return netif.ErrClosed // a shared map outlives the link: leave it alone
	}
	return l.flows.Add(k)
}

// UnsteerFlow implements netif.FlowSteerer.UnsteerFlow: the kernel's stack
// gets the flow's frames again. Removing an unknown key is not an error.
func (l *xlink) UnsteerFlow(k packet.Key) error {
	if l.closed.Load() {
		return netif.ErrClosed
	}
	return l.flows.Remove(k)
}

// Counters implements Link.Counters.
func (l *xlink) Counters() (steer.Counters, error) { return l.xdp.Counters() }

// Read implements netif.Link.Read and netif.SuperPacketLink's Read: a
// buffer of MaxSuperPacketLen bytes receives a TCP super packet whole, a
// shorter one its segments.
func (l *xlink) Read(bufs [][]byte, sizes []int) (int, error) {
	l.rxMu.Lock()
	defer l.rxMu.Unlock()
	if l.closed.Load() {
		return 0, netif.ErrClosed
	}
	limit := min(len(bufs), len(sizes))
	bufs, sizes = bufs[:limit], sizes[:limit]
	n, err := l.emitSegments(bufs, sizes)
	for err == nil && n < limit {
		avail, ok := l.rx.available()
		if !ok {
			l.badDescs.Add(1)
		}
		if avail == 0 {
			break
		}
		r := readRX(l.lay, l.rx.descs, l.rx.mask, l.rx.local, avail, l.umem, bufs[n:], sizes[n:], l.lim, &l.rxSkip, &l.rxFree)
		l.rx.release(uint32(r.consumed))
		var bytes int
		for _, s := range sizes[n : n+r.filled] {
			bytes += s
		}
		l.rxPackets.Add(uint64(r.filled))
		l.rxBytes.Add(uint64(bytes))
		n += r.filled
		if drops := r.bad + r.badChains + r.refused; drops > 0 {
			l.badDescs.Add(uint64(r.bad))
			l.badChains.Add(uint64(r.badChains))
			l.rxDrops.Add(uint64(drops))
		}
		if r.short {
			l.rxDrops.Add(1)
			err = fmt.Errorf("afxdp %s: %d-byte frame, buffer %d: %w", l.name, r.shortLen, len(bufs[n]), io.ErrShortBuffer)
			break
		}
		if r.staged == 0 {
			break // the ring is drained, bufs are full, or a chain is still arriving
		}
		if l.startSplit(l.lim.stage[:r.staged]) {
			var k int
			k, err = l.emitSegments(bufs[n:], sizes[n:])
			n += k
		}
	}
	l.refill()
	return n, err
}

// keep is readRX's keep: it sees every frame delivered into a caller's
// buffer. A super packet there is whole: it must be TCP (a UDP one stands
// for datagrams whose size AF_XDP does not carry), and its checksum, the
// pseudo-header sum GSO and GRO leave, is completed. A wire-sized frame's
// partial checksum is completed when the link does that. Called with rxMu
// held.
func (l *xlink) keep(f []byte) bool {
	if len(f) > l.maxFrame {
		l.superRx.Add(1)
		proto, ok := l.superProto(f)
		if !ok || proto != packet.ProtoTCP {
			return false
		}
	} else if !l.csumAll {
		return true
	}
	if vnet.CompletePartial(f, l3Offset(f)) {
		l.csumDone.Add(1)
	}
	return true
}

// superProto checks a super packet's headers and returns its L4 protocol,
// counting a drop when it is no TCP super packet.
func (l *xlink) superProto(f []byte) (uint8, bool) {
	proto, _, _, _, err := vnet.L4(f, l3Offset(f))
	switch {
	case err != nil:
		l.badSuper.Add(1)
		return 0, false
	case proto == packet.ProtoUDP:
		l.udpSuper.Add(1)
		return 0, false
	}
	return proto, true
}

// l3Offset is where the IP header of Ethernet frame f starts: after one
// 802.1Q/802.1ad tag if it carries one (as packet.Parse allows).
func l3Offset(f []byte) int {
	if len(f) >= 18 {
		if t := uint16(f[12])<<8 | uint16(f[13]); t == 0x8100 || t == 0x88a8 {
			return 18
		}
	}
	return 14
}

// startSplit prepares the staged super packet f to be handed out as MTU-sized
// segments (vnet computes their checksums from scratch). A super packet
// that is not TCP is dropped and counted. Called with rxMu held.
func (l *xlink) startSplit(f []byte) bool {
	l.superRx.Add(1)
	if _, ok := l.superProto(f); !ok {
		l.rxDrops.Add(1)
		return false
	}
	l3 := l3Offset(f)
	h := vnet.Hdr{GSOType: vnet.GSOTCPv4, GSOSize: uint16(vnet.DefaultMSS(f, l3, l.mtu))}
	if f[l3]>>4 == 6 {
		h.GSOType = vnet.GSOTCPv6
	}
	if err := l.split.Init(f, l3, &h); err != nil {
		l.badSuper.Add(1)
		l.rxDrops.Add(1)
		return false
	}
	l.superSplit.Add(1)
	l.split.Start()
	return true
}

// emitSegments hands out the next segments of the super packet being
// split. Called with rxMu held.
func (l *xlink) emitSegments(bufs [][]byte, sizes []int) (int, error) {
	k, bytes, err := l.split.Emit(bufs, sizes)
	l.rxPackets.Add(uint64(k))
	l.rxBytes.Add(bytes)
	if err != nil { // a buffer under MaxFrameLen: the caller broke the contract
		l.rxDrops.Add(1)
		return k, fmt.Errorf("afxdp %s: segment for a %d-byte buffer: %w: %w", l.name, len(bufs[k]), io.ErrShortBuffer, err)
	}
	return k, nil
}

// refill moves free RX chunks into the fill ring, as far as it has room.
// Called with rxMu held.
func (l *xlink) refill() {
	n := min(uint32(len(l.rxFree)), l.fill.room())
	if n == 0 {
		return
	}
	base := uint32(len(l.rxFree)) - n
	for i := uint32(0); i < n; i++ {
		putAddr(l.fill.descs, l.fill.mask, l.fill.local+i, l.rxFree[base+i])
	}
	l.rxFree = l.rxFree[:base]
	l.fill.submit(n)
	if l.fill.needWakeup() {
		// Zero-copy drivers sleep when the fill ring ran dry; a
		// non-blocking recvfrom wakes them. Copy mode never asks.
		wakeRX(l.fd)
	}
}

// Write implements netif.Link.Write: WriteGSO(frames, nil).
func (l *xlink) Write(frames [][]byte) (int, error) { return l.WriteGSO(frames, nil) }

// WriteGSO implements netif.SuperPacketLink.WriteGSO: it copies the frames
// into free TX frames of the UMEM, queues them on the TX ring and wakes the
// kernel. AF_XDP hands the kernel no segmentation offload, so a super
// packet (longer than MaxFrameLen, with multi-buffer) is segmented here,
// straight into its TX frames (vnet), with complete checksums; it goes
// whole or, when the ring lacks room for all its segments, not at all.
// Frames the device did not take at once (it was busy) stay queued and
// leave on the next Write, or Wait (in copy mode, poll drives
// transmission); Write(nil) only flushes. A full TX ring or no free TX
// frame tail-drops, counted in TxDrops.
func (l *xlink) WriteGSO(frames [][]byte, segSizes []int) (int, error) {
	l.txMu.Lock()
	defer l.txMu.Unlock()
	if l.closed.Load() {
		return 0, netif.ErrClosed
	}
	l.reclaim()
	room := min(l.tx.room(), uint32(len(l.txFree)))
	var n, queued uint32 // frames taken, descriptors queued
	var bytes int
	var err error
	for i, f := range frames {
		segs := uint32(1)
		if len(f) > l.maxFrame {
			seg := 0
			if i < len(segSizes) {
				seg = segSizes[i]
			}
			if segs, err = l.prepareSuper(f, seg); err != nil {
				err = fmt.Errorf("afxdp %s: frame %d of %d bytes: %w", l.name, i, len(f), err)
				break
			}
		}
		if queued+segs > room {
			l.txDrops.Add(uint64(len(frames) - i))
			break
		}
		for j := range segs {
			addr := l.txFree[len(l.txFree)-1]
			l.txFree = l.txFree[:len(l.txFree)-1]
			dst := l.umem[addr : addr+l.lay.frameSize]
			var m int
			if len(f) > l.maxFrame {
				// prepareSuper checked every segment fits a frame.
				m, _ = l.txSuper.Segment(int(j), dst)
			} else {
				m = copy(dst, f)
			}
			putTX(l.tx.descs, l.tx.mask, l.tx.local+queued, addr, uint32(m))
			queued++
			bytes += m
		}
		if len(f) > l.maxFrame {
			l.superTx.Add(1)
		}
		n++
	}
	if queued > 0 {
		l.tx.submit(queued)
		l.txPackets.Add(uint64(queued))
		l.txBytes.Add(uint64(bytes))
	}
	l.kick()
	return int(n), err
}

// prepareSuper readies l.txSuper to cut super packet f into seg-byte
// payloads (0: TCP segments of MTU bytes) and returns how many segments it
// makes. Every refusal wraps netif.ErrFrameTooLarge. Called with txMu held.
func (l *xlink) prepareSuper(f []byte, seg int) (uint32, error) {
	if len(f) > l.maxSuper {
		return 0, fmt.Errorf("most %d: %w", l.maxSuper, netif.ErrFrameTooLarge)
	}
	l3 := l3Offset(f)
	proto, l4, l4len, end, err := vnet.L4(f, l3)
	if err != nil || end != len(f) {
		return 0, fmt.Errorf("not a TCP/UDP super packet (%v): %w", err, netif.ErrFrameTooLarge)
	}
	h := vnet.Hdr{GSOSize: uint16(min(seg, 0xffff))}
	switch {
	case proto == packet.ProtoUDP && seg == 0:
		return 0, fmt.Errorf("UDP super packet without a datagram size (WriteGSO): %w", netif.ErrFrameTooLarge)
	case proto == packet.ProtoUDP:
		h.GSOType = vnet.GSOUDPL4
	case f[l3]>>4 == 6:
		h.GSOType = vnet.GSOTCPv6
	default:
		h.GSOType = vnet.GSOTCPv4
	}
	if seg == 0 {
		h.GSOSize = uint16(vnet.DefaultMSS(f, l3, l.mtu))
	}
	if h.GSOSize == 0 || l4+l4len+int(h.GSOSize) > l.maxFrame {
		return 0, fmt.Errorf("segments of %d payload bytes exceed the %d-byte frame: %w", h.GSOSize, l.maxFrame, netif.ErrFrameTooLarge)
	}
	if err := l.txSuper.Init(f, l3, &h); err != nil {
		return 0, fmt.Errorf("%v: %w", err, netif.ErrFrameTooLarge)
	}
	return uint32(l.txSuper.Segments()), nil
}

// reclaim takes completed TX chunks back. Called with txMu held.
func (l *xlink) reclaim() {
	avail, ok := l.comp.available()
	if !ok {
		l.badDescs.Add(1)
		return
	}
	if avail == 0 {
		return
	}
	if bad := readComp(l.lay, l.comp.descs, l.comp.mask, l.comp.local, avail, &l.txFree); bad > 0 {
		l.badDescs.Add(uint64(bad))
	}
	l.comp.release(avail)
}

// kick asks the kernel to transmit what is in the TX ring, when it says it
// needs asking (always, in copy mode). One sendto moves a bounded batch
// (32 descriptors unless XDP_MAX_TX_SKB_BUDGET was raised) and returns
// EAGAIN while more remain, so it loops, a bounded number of times. Called
// with txMu held.
func (l *xlink) kick() {
	if !l.tx.needWakeup() {
		return
	}
	for range l.tx.size/32 + 1 {
		if l.tx.pending() == 0 {
			return
		}
		again, err := wakeTX(l.fd)
		if err != nil {
			l.kickErrors.Add(1)
			return
		}
		if !again {
			return
		}
	}
}

// Wait implements netif.Link.Wait.
func (l *xlink) Wait(timeout time.Duration) error {
	l.rxMu.Lock()
	defer l.rxMu.Unlock()
	if l.closed.Load() {
		return netif.ErrClosed
	}
	if n, _ := l.rx.available(); n > 0 || timeout == 0 {
		return nil
	}
	closed, err := waitReadable(l.fd, l.wake.FD(), timeout)
	if closed && !l.closed.Load() && l.interruptWait() {
		return nil
	}
	if closed || l.closed.Load() {
		return netif.ErrClosed
	}
	if err != nil {
		return fmt.Errorf("afxdp %s: wait: %w", l.name, err)
	}
	return nil
}

// Stats implements netif.Link.Stats.
func (l *xlink) Stats() netif.Stats { return l.XDPStats().Stats }

// XDPStats implements Link.XDPStats. The kernel's drops count in RxDrops.
func (l *xlink) XDPStats() Stats {
	s := Stats{
		Stats: netif.Stats{
			RxPackets: l.rxPackets.Load(), RxBytes: l.rxBytes.Load(), RxDrops: l.rxDrops.Load(),
			TxPackets: l.txPackets.Load(), TxBytes: l.txBytes.Load(), TxDrops: l.txDrops.Load(),
		},
		BadDescs:    l.badDescs.Load(),
		KickErrors:  l.kickErrors.Load(),
		BindRetries: l.bindRetries,

		RxSuperPackets:  l.superRx.Load(),
		RxSuperSplit:    l.superSplit.Load(),
		RxCsumCompleted: l.csumDone.Load(),
		RxUDPSuper:      l.udpSuper.Load(),
		RxBadSuper:      l.badSuper.Load(),
		BadChains:       l.badChains.Load(),
		TxSuperPackets:  l.superTx.Load(),
	}
	l.fdMu.RLock()
	defer l.fdMu.RUnlock()
	k := l.lastKernel
	if l.fd >= 0 {
		if now, err := kernelStats(l.fd); err == nil {
			k = now
		}
	}
	s.KernelRxDropped = k.Rx_dropped
	s.KernelRxFull = k.Rx_ring_full
	s.KernelFillEmpty = k.Rx_fill_ring_empty_descs
	s.KernelTxInvalid = k.Tx_invalid_descs
	s.RxDrops += k.Rx_dropped + k.Rx_ring_full
	// What the program passed to the kernel: no flow, not parsed, or
	// no socket on the queue. The program's map goes with Close: after
	// it, the figure reads as zero.
	if l.xdp != nil {
		if c, err := l.xdp.Counters(); err == nil {
			s.KernelPassed = c.Miss + c.Unparsed + c.HitNoSocket
		}
	}
	return s
}

// Close implements netif.Link.Close.
func (l *xlink) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	_ = l.wake.Signal() // Wait returns, releasing rxMu
	l.rxMu.Lock()
	defer l.rxMu.Unlock()
	l.txMu.Lock()
	defer l.txMu.Unlock()
	l.fdMu.Lock()
	defer l.fdMu.Unlock()
	return l.release()
}
