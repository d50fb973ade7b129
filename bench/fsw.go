package bench

import (
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
)

// The fsw-rx scenario's rows: size is the Ethernet frame length in bytes.
var fswRows = []struct {
	name        string
	flows, size int
}{
	{"flows=1/size=64", 1, 64},
	{"flows=1024/size=64", 1024, 64},
	{"flows=100000/size=64", 100000, 64},
	{"flows=1024/size=1500", 1024, 1500},
}

const (
	fswBatch    = flowswitch.DefaultBatch // frames per loop: one Write, one Read
	fswBaseName = "ring-to-ring copy"
	// fswMaxChannels caps the channels a row spreads its flows over. A
	// real server carries many flows on few channels (one per app or per
	// core), so past flow.DefaultAdvisorySlots flows per channel the rows
	// give each channel more advisory slots instead of more channels: the
	// 100000-flow row then measures the flow table, not 32 deliveries to
	// 32 channels per input batch.
	fswMaxChannels = 4
)

// RFC 2544 benchmarking addresses: the switch owns fswLocal.
var fswLocal = netip.MustParseAddr("198.18.0.1")

// fswFlow is flow f's 5-tuple when spread over nch channels: channel
// f%nch owns local port 7000+f%nch (a local port belongs to one port), and
// the flows of one channel differ by remote address and port.
func fswFlow(f, nch int) (ch int, local, remote netip.AddrPort) {
	ch = f % nch
	j := f / nch // < 65536-10000: at most 25000 flows per channel in the rows
	local = netip.AddrPortFrom(fswLocal, uint16(7000+ch))
	remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(j >> 8), byte(j)}), uint16(10000+j))
	return ch, local, remote
}

// fswFrame builds an Ethernet/IPv4/UDP frame of size bytes from remote to
// local, checksums included.
func fswFrame(local, remote netip.AddrPort, size int) []byte {
	f := packettest.Frame{Src: remote, Dst: local, Proto: packet.ProtoUDP, Payload: []byte("fsw-rx"), Size: size}
	return f.Bytes()
}

// fswWorkload is a row's frames: frame i belongs to flow i%flows, so
// consecutive frames are distinct flows (each its own flow batch) unless
// there is one flow. touched[k] lists the channels batch k reaches.
type fswWorkload struct {
	flows, nch int
	slots      int      // advisory slots per channel: the most flows a channel has
	frames     [][]byte // len a multiple of fswBatch
	touched    [][]int
}

func newFswWorkload(flows, size int) fswWorkload {
	nch := min((flows+flow.DefaultAdvisorySlots-1)/flow.DefaultAdvisorySlots, fswMaxChannels)
	slots := max((flows+nch-1)/nch, flow.DefaultAdvisorySlots)
	n := (max(flows, fswBatch) + fswBatch - 1) / fswBatch * fswBatch
	w := fswWorkload{flows: flows, nch: nch, slots: slots, frames: make([][]byte, n)}
	seen := make([]int, nch)
	for k := 0; k < n; k += fswBatch {
		var t []int
		for i := k; i < k+fswBatch; i++ {
			ch, local, remote := fswFlow(i%flows, nch)
			w.frames[i] = fswFrame(local, remote, size)
			if seen[ch] != k+1 {
				seen[ch] = k + 1
				t = append(t, ch)
			}
		}
		w.touched = append(w.touched, t)
	}
	return w
}

// fswChannels creates n channels with adv advisory entries each (0: the
// default) and attaches their apps in this process.
func fswChannels(n, adv int) (chans []*channel.Channel, apps []*channel.App, closeAll func(), err error) {
	closeAll = func() {
		for i := range chans {
			if i < len(apps) {
				apps[i].Close()
			}
			chans[i].Close()
		}
	}
	for i := range n {
		c, err := channel.New(channel.Options{Name: fmt.Sprintf("fsw%d", i), Advisories: adv})
		if err != nil {
			closeAll()
			return nil, nil, nil, err
		}
		chans = append(chans, c)
		a, err := c.AttachLocal()
		if err != nil {
			closeAll()
			return nil, nil, nil, err
		}
		apps = append(apps, a)
	}
	return chans, apps, closeAll, nil
}

// fswDrain is the apps' side for one batch: each touched app receives and
// frees everything on its RX ring, and the nexus syncs its channel (takes
// the freed buffers back), as the worker loop does. It returns the packets
// received.
func fswDrain(chans []*channel.Channel, apps []*channel.App, touched []int, bufs []channel.Buf) (int, error) {
	got := 0
	for _, c := range touched {
		for {
			n, err := apps[c].Receive(bufs)
			if err != nil {
				return got, err
			}
			if n == 0 {
				break
			}
			got += n
			if k, err := apps[c].Free(bufs[:n]); err != nil || k != n {
				return got, fmt.Errorf("app %d freed %d of %d: %v", c, k, n, err)
			}
		}
		if err := chans[c].Sync(); err != nil {
			return got, err
		}
	}
	return got, nil
}

// fswLoop runs step (fill, forward, drain one batch) for d and returns the
// packets the apps received over the time taken.
func fswLoop(d time.Duration, step func() (int, error)) (Rate, error) {
	var n uint64
	start := time.Now()
	for iter := 1; ; iter++ {
		k, err := step()
		if err != nil {
			return Rate{}, err
		}
		n += uint64(k)
		if iter&63 == 0 {
			if el := time.Since(start); el >= d {
				return Rate{Count: float64(n), Elapsed: el}, nil
			}
		}
	}
}

// fswRig is the switch side: a memif wire, the switch on one end, the
// workload's flows registered over its channels.
type fswRig struct {
	w      *fswWorkload
	peer   netif.Link
	sw     *flowswitch.Switch
	chans  []*channel.Channel
	apps   []*channel.App
	bufs   []channel.Buf
	pos    int // next batch of w.frames
	closer func()
}

func newFswRig(w *fswWorkload) (*fswRig, error) {
	a, b, err := memif.NewPair(memif.Options{Name: "fsw"})
	if err != nil {
		return nil, err
	}
	sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{fswLocal}, Batch: fswBatch,
		AdvisorySlots: w.slots})
	if err != nil {
		a.Close()
		return nil, err
	}
	chans, apps, closeAll, err := fswChannels(w.nch, w.slots)
	if err != nil {
		a.Close()
		return nil, err
	}
	r := &fswRig{w: w, peer: b, sw: sw, chans: chans, apps: apps, bufs: make([]channel.Buf, 256),
		closer: func() { closeAll(); a.Close() }}
	ports := make([]flow.PortID, w.nch)
	for i, c := range chans {
		ports[i] = sw.AddPort(c)
	}
	for f := range w.flows {
		ch, local, remote := fswFlow(f, w.nch)
		if _, err := sw.Register(ports[ch], packet.MakeKey(packet.ProtoUDP, local, remote), flow.Connected); err != nil {
			r.closer()
			return nil, fmt.Errorf("register flow %d: %w", f, err)
		}
	}
	return r, nil
}

func (r *fswRig) step() (int, error) {
	k := r.pos
	r.pos = (r.pos + 1) % len(r.w.touched)
	if n, err := r.peer.Write(r.w.frames[k*fswBatch : (k+1)*fswBatch]); n != fswBatch || err != nil {
		return 0, fmt.Errorf("peer write: %d of %d: %v", n, fswBatch, err)
	}
	// The nexus worker's round: the input batch, then the ports' (empty)
	// transmit and the timed work, as the product runs it.
	if n, _, err := r.sw.Round(flowswitch.ReadDevice); n != fswBatch || err != nil {
		return 0, fmt.Errorf("Round = %d, %v; want %d", n, err, fswBatch)
	}
	got, err := fswDrain(r.chans, r.apps, r.w.touched[k], r.bufs)
	if err == nil && got != fswBatch {
		err = fmt.Errorf("apps received %d of %d packets (stats %+v)", got, fswBatch, r.sw.Stats())
	}
	return got, err
}

// fswCopy is the baseline: the same frames over the same kind of wire, read
// in batches and copied whole into one channel's buffers, one Alloc and one
// Deliver per batch, no parsing and no classification.
type fswCopy struct {
	w      *fswWorkload
	link   netif.Link // read end
	peer   netif.Link
	ch     *channel.Channel
	app    *channel.App
	in     [][]byte
	sizes  []int
	out    []channel.Buf
	bufs   []channel.Buf
	one    []int
	pos    int
	closer func()
}

func newFswCopy(w *fswWorkload) (*fswCopy, error) {
	a, b, err := memif.NewPair(memif.Options{Name: "fswbase"})
	if err != nil {
		return nil, err
	}
	chans, apps, closeAll, err := fswChannels(1, 0)
	if err != nil {
		a.Close()
		return nil, err
	}
	frameLen := netif.MaxFrameLen(a.MTU(), a.LinkType())
	c := &fswCopy{w: w, link: a, peer: b, ch: chans[0], app: apps[0],
		in: make([][]byte, fswBatch), sizes: make([]int, fswBatch),
		out: make([]channel.Buf, fswBatch), bufs: make([]channel.Buf, 256), one: []int{0},
		closer: func() { closeAll(); a.Close() }}
	mem := make([]byte, fswBatch*frameLen)
	for i := range c.in {
		c.in[i] = mem[i*frameLen : (i+1)*frameLen : (i+1)*frameLen]
	}
	return c, nil
}

func (c *fswCopy) step() (int, error) {
	k := c.pos
	c.pos = (c.pos + 1) % len(c.w.touched)
	if n, err := c.peer.Write(c.w.frames[k*fswBatch : (k+1)*fswBatch]); n != fswBatch || err != nil {
		return 0, fmt.Errorf("peer write: %d of %d: %v", n, fswBatch, err)
	}
	n, err := c.link.Read(c.in, c.sizes)
	if n != fswBatch || err != nil {
		return 0, fmt.Errorf("read = %d, %v; want %d", n, err, fswBatch)
	}
	got := c.ch.Alloc(c.out[:n])
	if got != n {
		c.ch.Release(c.out[:got])
		return 0, fmt.Errorf("alloc %d of %d buffers", got, n)
	}
	for i := range n {
		b := &c.out[i]
		b.Data = b.Data[:copy(b.Data, c.in[i][:c.sizes[i]])]
	}
	if d := c.ch.Deliver(c.out[:n]); d != n {
		return 0, fmt.Errorf("delivered %d of %d", d, n)
	}
	clear(c.out)
	got, err = fswDrain([]*channel.Channel{c.ch}, []*channel.App{c.app}, c.one, c.bufs)
	if err == nil && got != n {
		err = fmt.Errorf("app received %d of %d packets", got, n)
	}
	return got, err
}

func runFswRx(cfg Config) (Report, error) {
	rep := Report{Scenario: "fsw-rx", Machine: Machine()}
	for _, row := range fswRows {
		if !cfg.wants(row.name) {
			continue
		}
		cfg.progress("fsw-rx %s", row.name)
		r, err := fswRow(cfg, row.name, row.flows, row.size)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

func fswRow(cfg Config, name string, flows, size int) (Result, error) {
	setup := time.Now()
	w := newFswWorkload(flows, size)
	rig, err := newFswRig(&w)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	defer rig.closer()
	base, err := newFswCopy(&w)
	if err != nil {
		return Result{}, fmt.Errorf("%s baseline: %w", name, err)
	}
	defer base.closer()
	// Warm up both: every frame once, so pools have grown and the flow
	// table and frames have been touched before the clock runs.
	for range len(w.touched) {
		if _, err := rig.step(); err != nil {
			return Result{}, fmt.Errorf("%s warm-up: %w", name, err)
		}
		if _, err := base.step(); err != nil {
			return Result{}, fmt.Errorf("%s baseline warm-up: %w", name, err)
		}
	}
	cfg.progress("  setup and warm-up %v (%d channels)", time.Since(setup).Round(time.Millisecond), w.nch)
	st0 := rig.sw.Stats()
	o, b, err := Measure(cfg, name,
		func(d time.Duration) (Rate, error) { return fswLoop(d, rig.step) },
		func(d time.Duration) (Rate, error) { return fswLoop(d, base.step) })
	if err != nil {
		return Result{}, err
	}
	st := rig.sw.Stats()
	if drops := st.NoFlow + st.Oversize + st.AllocFails + st.RxRingDrops; drops != 0 || st.Delivered != st.Packets {
		return Result{}, fmt.Errorf("%s: switch dropped packets: %+v", name, st)
	}
	batches := float64(st.Batches - st0.Batches)
	if batches == 0 || o <= 0 || b <= 0 {
		return Result{}, errors.New(name + ": nothing measured")
	}
	res := Throughput(name, "Mpps", o/1e6, fswBaseName, b/1e6)
	res.Extra = map[string]any{
		"channels":               w.nch,
		"flows_per_channel_max":  w.slots,
		"deliveries_per_batch":   round2(float64(st.Deliveries-st0.Deliveries) / batches),
		"flow_batches_per_batch": round2(float64(st.FlowBatches-st0.FlowBatches) / batches),
		"batch":                  fswBatch,
	}
	return res, nil
}
