package metrics

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skylane/skylane/flowswitch"
)

// DefaultMaxPorts is Options.MaxPorts's default: past 256 ports, the
// quietest are folded, so a nexus with thousands of short-lived apps keeps
// a bounded number of series.
const DefaultMaxPorts = 256

// foldedPort labels the series of the ports folded together.
const foldedPort = "other"

// App is who a port belongs to: the name its app opened it with and the
// app's uid.
type App struct {
	Name string
	UID  uint32
}

// collectPorts sends the port series: the MaxPorts busiest one by one,
// with their port_info if Options.Apps knows them, the rest summed.
func (c *Collector) collectPorts(ch chan<- prometheus.Metric, ports []flowswitch.PortStats) {
	all := make([]*portSt, len(ports))
	for i := range ports {
		all[i] = &ports[i]
	}
	if len(all) > c.maxPorts {
		slices.SortStableFunc(all, func(a, b *portSt) int {
			return cmp.Compare(b.Delivered+b.TxPackets, a.Delivered+a.TxPackets)
		})
	}
	var apps map[string]App
	if c.apps != nil {
		apps = c.apps()
	}
	n := min(len(all), c.maxPorts)
	if n < len(all) {
		n-- // room for the folded set within MaxPorts
	}
	for _, p := range all[:n] {
		id := strconv.FormatUint(uint64(p.Port), 10)
		collect(ch, c.port, p, id, p.Channel)
		if p.Regulation != nil {
			collect(ch, c.portReg, p.Regulation, id, p.Channel)
		}
		if a, ok := apps[p.Channel]; ok {
			send(ch, c.portInfo, prometheus.GaugeValue, 1, id, p.Channel, a.Name, strconv.FormatUint(uint64(a.UID), 10))
		}
	}
	if rest := all[n:]; len(rest) > 0 {
		fold(ch, c.port, rest, func(p *portSt) *portSt { return p })
		var reg []*portSt
		for _, p := range rest {
			if p.Regulation != nil {
				reg = append(reg, p)
			}
		}
		if len(reg) > 0 {
			fold(ch, c.portReg, reg, func(p *portSt) *portReg { return p.Regulation })
		}
	}
}

// fold sends each family of fams once, summed over xs, as the folded
// port.
func fold[T any](ch chan<- prometheus.Metric, fams []family[T], xs []*portSt, get func(*portSt) *T) {
	for i := range fams {
		f := &fams[i]
		var v float64
		for _, x := range xs {
			v += f.value(get(x))
		}
		send(ch, f.desc, f.vt, v, foldedPort, foldedPort)
	}
}
