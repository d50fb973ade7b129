package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/histogram"
)

// The datapath's histograms (flowswitch.SnapshotHists, and the AQM's
// sojourn with Regulation).

func (c *Collector) newHists(b builder) {
	c.hRxBatch = b.desc("rx_batch_size", "Frames per input batch read from the link.", nil)
	c.hSuper = b.desc("rx_super_packet_bytes", "IP bytes of each TCP super packet delivered to an app.", nil)
	c.hSojourn = b.desc("aqm_sojourn_seconds", "Time each packet dequeued from the AQM waited in it.", nil)
}

func (c *Collector) describeHists(ch chan<- *prometheus.Desc) {
	ch <- c.hRxBatch
	ch <- c.hSuper
	ch <- c.hSojourn
}

func (c *Collector) collectHists(ch chan<- prometheus.Metric, snap *flowswitch.Snapshot) {
	sendHist(ch, c.hRxBatch, snap.Hists.RxBatch)
	sendHist(ch, c.hSuper, snap.Hists.SuperPacket)
	if snap.Regulation != nil {
		sendHist(ch, c.hSojourn, snap.Regulation.Sojourn)
	}
}

func sendHist(ch chan<- prometheus.Metric, d *prometheus.Desc, h histogram.Snapshot) {
	m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, h.Cumulative())
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}
