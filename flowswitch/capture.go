package flowswitch

import (
	"slices"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/packet"
)

// Capture (skylane capture): the datapath copies the frames at its capture
// points into the rings of the captures running (capture.Ring), which
// filter them before the copy and drop, counted, what a full ring cannot
// take: a capture never slows or blocks the datapath beyond its copies.
// With no capture running, each hook is one predictable branch per batch
// (per flow batch in release, per dropped packet on the drop paths), on
// capState.on.
//
// Capture points and where they are:
//   - device-rx: every frame of an input batch, as read (rxDeliver).
//   - app-rx: every buffer staged for an app's RX ring, before the
//     Deliver.
//   - app-tx: the switch's copy of every packet an app sent, before the
//     checks.
//   - drop-tx: a packet the checks refused, with the reason its counter
//     has (TxDrops.List); with a capture running, every packet takes the
//     full checks (txCheck), which count the reason the fast path would.
//   - device-tx: what passed the checks, framed, as handed to the link
//     (or to the TxQueue or the AQM, which may still drop it), with the
//     sending app; the kernel's frames, read from the host link.
//   - kernel-rx, kernel-tx: the frames to and from the host link.
//   - drop-rx: frames that failed to parse (parse_<reason>), of no flow
//     without a host link (no_flow), and, with their port's channel,
//     refused by its receive limits (rx_rate, rx_budget), by a listener
//     flow's share of it (listen_share, rxlisten.go) or its full RX
//     ring (rx_ring_full), too large for it (oversize) or refused for want
//     of a buffer (alloc_fail).
//   - drop-tx also: what the AQM drops or refuses after device-tx
//     (aqm_codel, aqm_overflow, aqm_early), through its drop hook, set
//     only while a capture runs. Not captured: what the device itself or
//     the neighbour resolver drop after device-tx (device_full,
//     neigh_hold_full, neigh_expired), and split_csum.

// capState is the switch's captures, guarded by its lock.
type capState struct {
	on    bool // len(rings) > 0: the hooks' one branch
	rings []*capture.Ring
	// parse names the parse drops as Snapshot's drops do, made once.
	parse [packet.NumReasons]string
}

// AddCapture makes the datapath copy frames into r from the next step on,
// until RemoveCapture. The switch is r's only writer meanwhile.
func (s *Switch) AddCapture(r *capture.Ring) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.capt
	if c.parse[1] == "" {
		for x := packet.Reason(1); x < packet.NumReasons; x++ {
			c.parse[x] = "parse_" + x.String()
		}
	}
	c.rings = append(slices.Clone(c.rings), r)
	c.on = true
	if s.reg != nil {
		s.reg.q.SetDropHook(s.capAQMDrop)
	}
}

// RemoveCapture stops copying into r: once it returns, the switch no
// longer writes r.
func (s *Switch) RemoveCapture(r *capture.Ring) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.capt
	c.rings = slices.DeleteFunc(slices.Clone(c.rings), func(x *capture.Ring) bool { return x == r })
	c.on = len(c.rings) > 0
	if !c.on && s.reg != nil {
		s.reg.q.SetDropHook(nil)
	}
}

// capAQMDrop captures at drop-tx a packet the AQM dropped or refused
// (regulate.Queue's drop hook: called in the round, with s.mu held). The
// AQM holds frames as the device takes them; it does not know their app.
func (s *Switch) capAQMDrop(frame []byte, reason string) {
	s.capPut(capNow(), capture.DropTx, s.linkType, "", reason, frame)
	s.capWake()
}

// LinkType returns the device link's type: the framing of the frames at
// the device and kernel capture points.
func (s *Switch) LinkType() packet.LinkType { return s.linkType }

// capPut offers frame b at point p to every capture, and wakes their
// readers.
func (s *Switch) capPut(t int64, p capture.Point, lt packet.LinkType, app, reason string, b []byte) {
	for _, r := range s.capt.rings {
		r.Put(t, p, lt, app, reason, b)
	}
}

func (s *Switch) capWake() {
	for _, r := range s.capt.rings {
		r.Ring()
	}
}

func capNow() int64 { return time.Now().UnixNano() }

// capRx captures the input batch s.bufs[:n] at device-rx.
func (s *Switch) capRx(n int) {
	t := capNow()
	for i := range n {
		s.capPut(t, capture.DeviceRx, s.linkType, "", "", s.bufs[i][:s.sizes[i]])
	}
	s.capWake()
}

// capRxDrop captures frame i of the input batch, dropped for reason.
func (s *Switch) capRxDrop(i int, reason string) {
	if s.capt.on {
		s.capPut(capNow(), capture.DropRx, s.linkType, "", reason, s.bufs[i][:s.sizes[i]])
		s.capWake()
	}
}

// capParseDrop captures frame i, which Parse rejected with err.
func (s *Switch) capParseDrop(i int, err error) {
	if s.capt.on {
		s.capRxDrop(i, s.capt.parse[packet.ReasonOf(err)])
	}
}

// capRxPkts captures the packets pkts of the input batch (their L3
// packets), dropped for reason on their way to port p.
func (s *Switch) capRxPkts(p *port, pkts []int32, reason string) {
	if !s.capt.on || len(pkts) == 0 {
		return
	}
	t := capNow()
	for _, i := range pkts {
		s.capPut(t, capture.DropRx, s.linkType, p.ch.Name(), reason, s.bufs[i][:s.sizes[i]])
	}
	s.capWake()
}

// capAdmit is rxAdmit, capturing with a capture running the packets it
// refuses: rxAdmit keeps a prefix of the runs and refuses, in this order
// behind it, those over the rate (rx_rate), over the budget (rx_budget)
// and beyond the RX ring's room (rx_ring_full, counted by the channel).
func (s *Switch) capAdmit(p *port, pkts []int32, runs []int32) []int32 {
	if !s.capt.on {
		return s.rxAdmit(p, pkts, runs)
	}
	rate, budget := p.rx.rateDrops, p.rx.budgetDrops
	kept := s.rxAdmit(p, pkts, runs)
	at := int(packetsIn(kept))
	rate, budget = p.rx.rateDrops-rate, p.rx.budgetDrops-budget
	s.capRxPkts(p, pkts[at:at+int(rate)], "rx_rate")
	at += int(rate)
	s.capRxPkts(p, pkts[at:at+int(budget)], "rx_budget")
	at += int(budget)
	s.capRxPkts(p, pkts[at:], "rx_ring_full")
	return kept
}

// capAppRx captures the buffers staged for the touched ports' RX rings.
func (s *Switch) capAppRx() {
	t := capNow()
	for _, p := range s.touchedPorts {
		name := p.ch.Name()
		for _, b := range p.pending {
			s.capPut(t, capture.AppRx, packet.RawIP, name, "", b.Data)
		}
	}
	s.capWake()
}

// capFrames captures frames at point pt, for app ("" for none).
func (s *Switch) capFrames(pt capture.Point, app string, frames [][]byte) {
	t := capNow()
	for _, f := range frames {
		s.capPut(t, pt, s.linkType, app, "", f)
	}
	s.capWake()
}

// capHostTx captures the kernel's frames, read from the host link, at
// kernel-tx and, as they go to the device unchanged, at device-tx.
func (s *Switch) capHostTx(frames [][]byte) {
	s.capFrames(capture.KernelTx, "", frames)
	s.capFrames(capture.DeviceTx, "", frames)
}

// capTxChecks is txChecks with a capture running: it captures the n
// copies of port p's packets at app-tx, then checks each with the full
// checks, capturing a refused one at drop-tx with the reason counted.
func (s *Switch) capTxChecks(p *port, n int) {
	tx := &s.tx
	t := capNow()
	name := p.ch.Name()
	for i := range n {
		s.capPut(t, capture.AppTx, packet.RawIP, name, "", tx.copies[i][:tx.lens[i]])
	}
	for i := range n {
		before, out := s.stats.TxDrops, len(tx.out)
		s.txCheck(p, i)
		if len(tx.out) == out {
			s.capPut(t, capture.DropTx, packet.RawIP, name, txDropReason(&before, &s.stats.TxDrops), tx.copies[i][:tx.lens[i]])
		}
	}
	s.capWake()
}

// txDropReason names the counter that differs between a and b.
func txDropReason(a, b *TxDrops) string {
	la, lb := a.List(), b.List()
	for i := range la {
		if la[i].Packets != lb[i].Packets {
			return la[i].Reason
		}
	}
	return "unknown"
}
