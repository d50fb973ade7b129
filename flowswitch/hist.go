package flowswitch

import "github.com/skylane/skylane/histogram"

// Histograms of the datapath (metrics: rx_batch_size,
// rx_super_packet_bytes): updated under the switch's lock, once per input
// batch and once per super packet, without allocating.
type hists struct {
	rxBatch histogram.H // frames per input batch
	super   histogram.H // IP bytes of each super packet delivered
}

// Bucket bounds: batches of 1 to MaxBatch frames by powers of two; super
// packets from two MTU-sized segments to MaxMergeLimit.
var (
	rxBatchBounds = histogram.Exponential(1, 2, 9) // 1 .. 256
	superBounds   = []float64{3000, 6000, 12000, 24000, 48000, 65535}
)

func (h *hists) init() {
	h.rxBatch = histogram.New(rxBatchBounds...)
	h.super = histogram.New(superBounds...)
}

// SnapshotHists are the datapath's histograms.
type SnapshotHists struct {
	RxBatch     histogram.Snapshot `json:"rx_batch"`
	SuperPacket histogram.Snapshot `json:"super_packet"`
}
