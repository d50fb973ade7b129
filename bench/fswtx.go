package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/pool"
)

// The fsw-tx scenario's rows: size is the frame length on the wire, as in
// fsw-rx: the app sends IP packets 14 bytes shorter (the switch writes the
// Ethernet header).
var fswTxRows = []struct {
	name string
	size int
}{
	{"validate/size=64", 64},
}

const (
	fswTxBatch    = flowswitch.TxBatch // packets per loop: one Send, one TxOnce, one Read
	fswTxBaseName = "same path, checks off"
	fswTxQueueLen = 4096 // memif frames per direction: far more than one batch
	fswTxEthLen   = 14
)

var (
	fswTxSrcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	fswTxDstMAC = [6]byte{0x02, 0, 0, 0, 0, 0xfe}
	// The one flow: local 198.18.0.1:7000 ↔ remote 198.19.0.2:10000.
	fswTxLocal  = netip.AddrPortFrom(fswLocal, 7000)
	fswTxRemote = netip.AddrPortFrom(netip.MustParseAddr("198.19.0.2"), 10000)
)

// fswTxPacket is a valid IPv4/UDP packet from local to remote, checksums
// included, with no L2 header (what an app sends), whose frame on the wire
// is size bytes.
func fswTxPacket(size int) []byte {
	f := packettest.Frame{Link: packet.RawIP, Src: fswTxLocal, Dst: fswTxRemote, Proto: packet.ProtoUDP,
		Payload: []byte("fsw-tx"), Size: size - fswTxEthLen}
	return f.Bytes()
}

// fswTxRig is one transmit path: an app on a channel, its nexus side, a memif
// wire whose peer end drains, and forward, the nexus's per-batch work (the
// switch's TxOnce, or the baseline's copy without checks).
type fswTxRig struct {
	pkt     []byte
	id      [16]byte // the flow ID the app writes in each buffer's metadata
	ch      *channel.Channel
	app     *channel.App
	link    netif.Link // the nexus's end
	peer    netif.Link
	abufs   []channel.Buf // app scratch; len fswTxBatch
	rbufs   [][]byte      // peer read buffers
	sizes   []int
	forward func() (int, error)
	closer  func()
}

func newFswTxRig(name string, size int) (*fswTxRig, error) {
	a, b, err := memif.NewPair(memif.Options{Name: name, QueueLen: fswTxQueueLen})
	if err != nil {
		return nil, err
	}
	chans, apps, closeAll, err := fswChannels(1, 0)
	if err != nil {
		a.Close()
		return nil, err
	}
	r := &fswTxRig{pkt: fswTxPacket(size), ch: chans[0], app: apps[0], link: a, peer: b,
		abufs: make([]channel.Buf, fswTxBatch), rbufs: make([][]byte, fswTxBatch), sizes: make([]int, fswTxBatch),
		closer: func() { closeAll(); a.Close() }}
	frameLen := netif.MaxFrameLen(b.MTU(), b.LinkType())
	mem := make([]byte, fswTxBatch*frameLen)
	for i := range r.rbufs {
		r.rbufs[i] = mem[i*frameLen : (i+1)*frameLen : (i+1)*frameLen]
	}
	return r, nil
}

// newFswTxSwitch is our path: the switch on the wire, the flow registered for
// the channel's port, forward = TxOnce.
func newFswTxSwitch(size int) (*fswTxRig, *flowswitch.Switch, error) {
	r, err := newFswTxRig("fswtx", size)
	if err != nil {
		return nil, nil, err
	}
	sw, err := flowswitch.New(flowswitch.Options{Link: r.link, LocalAddrs: []netip.Addr{fswLocal},
		SrcMAC: fswTxSrcMAC, DstMAC: fswTxDstMAC})
	if err != nil {
		r.closer()
		return nil, nil, err
	}
	port := sw.AddPort(r.ch)
	e, err := sw.Register(port, packet.MakeKey(packet.ProtoUDP, fswTxLocal, fswTxRemote), flow.Connected)
	if err != nil {
		r.closer()
		return nil, nil, fmt.Errorf("register flow: %w", err)
	}
	r.id = e.ID()
	r.forward = func() (int, error) { return sw.TxOnce(port) }
	return r, sw, nil
}

// fswTxCopy is the baseline's nexus side: TxOnce with the checks off. It takes
// the same packets from the TX ring, copies each packet and its flow ID into
// its own frame buffers behind the Ethernet header, releases the channel
// buffers, and writes every frame to the link in one Write: no length
// checks, no parse, no flow lookup.
type fswTxCopy struct {
	ch     *channel.Channel
	link   netif.Link
	hdr    int
	bufs   []channel.Buf
	frames [][]byte
	ids    [][16]byte
	out    [][]byte
}

func newFswTxBaseline(size int) (*fswTxRig, error) {
	r, err := newFswTxRig("fswtxbase", size)
	if err != nil {
		return nil, err
	}
	lt := r.link.LinkType()
	if lt != packet.Ethernet {
		r.closer()
		return nil, fmt.Errorf("memif link type %v, want Ethernet", lt)
	}
	mtu := r.link.MTU()
	c := &fswTxCopy{ch: r.ch, link: r.link, hdr: netif.HeaderLen(lt),
		bufs: make([]channel.Buf, fswTxBatch), frames: make([][]byte, fswTxBatch),
		ids: make([][16]byte, fswTxBatch), out: make([][]byte, 0, fswTxBatch)}
	frameLen := netif.MaxFrameLen(mtu, lt)
	mem := make([]byte, fswTxBatch*frameLen)
	for i := range c.frames {
		f := mem[i*frameLen : (i+1)*frameLen : (i+1)*frameLen]
		copy(f[c.hdr-fswTxEthLen:], fswTxDstMAC[:])
		copy(f[c.hdr-fswTxEthLen+6:], fswTxSrcMAC[:])
		c.frames[i] = f
	}
	r.id = [16]byte{0: 1} // any ID: nobody checks it
	r.forward = c.forward
	return r, nil
}

func (c *fswTxCopy) forward() (int, error) {
	n, err := c.ch.TakeTX(c.bufs)
	if err != nil || n == 0 {
		return 0, err
	}
	meta := c.ch.Pool()
	for i, b := range c.bufs[:n] {
		f := c.frames[i]
		k := copy(f[c.hdr:], b.Data)
		copy(c.ids[i][:], meta.UserMeta(b.Index)[channel.TxMetaFlowIDOff:channel.TxMetaFlowIDOff+channel.TxMetaFlowIDLen])
		binary.BigEndian.PutUint16(f[c.hdr-2:], packet.EtherTypeIPv4)
		c.out = append(c.out, f[c.hdr-fswTxEthLen:c.hdr+k])
	}
	c.ch.Release(c.bufs[:n])
	clear(c.bufs[:n])
	_, err = c.link.Write(c.out)
	clear(c.out)
	c.out = c.out[:0]
	return n, err
}

// step is one loop: the nexus syncs the channel (refills the alloc ring, as
// the worker loop does), the app allocates a batch, writes the packet and
// its flow ID in each buffer and sends; the nexus forwards; the peer reads
// the frames. It returns the frames the peer read.
func (r *fswTxRig) step() (int, error) {
	got := 0
	for try := 0; got < fswTxBatch; try++ {
		if err := r.ch.Sync(); err != nil {
			return 0, err
		}
		n, err := r.app.Alloc(r.abufs[got:])
		if err != nil {
			return 0, fmt.Errorf("app alloc: %w", err)
		}
		got += n
		if n == 0 && try > 3 {
			return 0, fmt.Errorf("app alloc: %d of %d buffers", got, fswTxBatch)
		}
	}
	for i := range r.abufs {
		b := &r.abufs[i]
		b.Data = b.Data[:copy(b.Data, r.pkt)]
		m, err := r.app.Meta(b.Index)
		if err != nil {
			return 0, fmt.Errorf("app meta: %w", err)
		}
		copy(m[channel.TxMetaFlowIDOff:], r.id[:])
		clear(m[channel.TxMetaFlowIDLen:pool.UserMetaLen])
	}
	if n, err := r.app.Send(r.abufs); n != fswTxBatch || err != nil {
		return 0, fmt.Errorf("app send: %d of %d: %v", n, fswTxBatch, err)
	}
	clear(r.abufs)
	if n, err := r.forward(); n != fswTxBatch || err != nil {
		return 0, fmt.Errorf("forward took %d of %d: %v", n, fswTxBatch, err)
	}
	n, err := r.peer.Read(r.rbufs, r.sizes)
	if err != nil {
		return n, fmt.Errorf("peer read: %w", err)
	}
	if n != fswTxBatch {
		return n, fmt.Errorf("peer read %d of %d frames", n, fswTxBatch)
	}
	if r.sizes[0] != fswTxEthLen+len(r.pkt) {
		return n, fmt.Errorf("peer read a %d-byte frame, want %d", r.sizes[0], fswTxEthLen+len(r.pkt))
	}
	return n, nil
}

func runFswTx(cfg Config) (Report, error) {
	rep := Report{Scenario: "fsw-tx", Machine: Machine()}
	for _, row := range fswTxRows {
		if !cfg.wants(row.name) {
			continue
		}
		cfg.progress("fsw-tx %s", row.name)
		r, err := fswTxRow(cfg, row.name, row.size)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

func fswTxRow(cfg Config, name string, size int) (Result, error) {
	rig, sw, err := newFswTxSwitch(size)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	defer rig.closer()
	base, err := newFswTxBaseline(size)
	if err != nil {
		return Result{}, fmt.Errorf("%s baseline: %w", name, err)
	}
	defer base.closer()
	// Warm up both, so the alloc working sets have grown and the buffers
	// have been touched before the clock runs.
	for range 64 {
		if _, err := rig.step(); err != nil {
			return Result{}, fmt.Errorf("%s warm-up: %w (stats %+v)", name, err, sw.Stats())
		}
		if _, err := base.step(); err != nil {
			return Result{}, fmt.Errorf("%s baseline warm-up: %w", name, err)
		}
	}
	st0 := sw.Stats()
	o, b, err := Measure(cfg, name,
		func(d time.Duration) (Rate, error) { return fswLoop(d, rig.step) },
		func(d time.Duration) (Rate, error) { return fswLoop(d, base.step) })
	if err != nil {
		return Result{}, fmt.Errorf("%w (stats %+v)", err, sw.Stats())
	}
	st := sw.Stats()
	ls, bls := rig.link.Stats(), base.link.Stats()
	cs, bcs := rig.ch.Counters(), base.ch.Counters()
	if st.TxDrops != (flowswitch.TxDrops{}) || st.TxPackets != cs.TxPackets || ls.TxDrops != 0 || ls.TxPackets != st.TxPackets {
		return Result{}, fmt.Errorf("%s: transmit path dropped packets: switch %+v, link %+v, channel took %d",
			name, st, ls, cs.TxPackets)
	}
	if bls.TxDrops != 0 || bls.TxPackets != bcs.TxPackets {
		return Result{}, fmt.Errorf("%s baseline: dropped packets: link %+v, channel took %d", name, bls, bcs.TxPackets)
	}
	pkts := st.TxPackets - st0.TxPackets
	if pkts == 0 || o <= 0 || b <= 0 {
		return Result{}, errors.New(name + ": nothing measured")
	}
	res := Throughput(name, "Mpps", o/1e6, fswTxBaseName, b/1e6)
	res.Extra = map[string]any{
		"batch":     fswTxBatch,
		"ip_len":    size - fswTxEthLen,
		"frame_len": size,
		"drops":     0,
		"packets":   pkts,
	}
	return res, nil
}
