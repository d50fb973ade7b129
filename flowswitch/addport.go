package flowswitch

import (
	"fmt"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/regulate"
)

// AddPortOptions configure a port (AddPortWith).
type AddPortOptions struct {
	// Advisories says the port's app honours flow advisories: it reads
	// its channel's advisory table (or EventAdvisory) and stops sending
	// on a SUSPENDED flow until the entry clears. Its flows are then
	// suspended by the AQM instead of dropped (docs/design.md §7). Set it only for
	// an app that listens: a suspended flow whose sender goes on is held
	// only by the queue limit. Without Regulation it has no effect.
	Advisories bool
	// Rate caps the port's transmit rate in bits per second of IP bytes
	// (a token bucket, regulate.TokenBucket); 0 is no cap. Burst is the
	// bucket's depth in bytes: 0 means DefaultPortBurst. Needs Regulation.
	Rate  int64
	Burst int
	// RxRate caps the port's receive rate in bits per second of IP bytes
	// delivered (a token bucket): what comes faster is dropped before the
	// copy (rxlimit.go). 0 is no cap. RxBurst is the bucket's depth in
	// bytes: 0 means DefaultPortBurst. Needs Regulation.
	RxRate  int64
	RxBurst int
}

// AddPortWith is AddPort with options (AddPortOptions): whether the app
// honours flow advisories, and a rate cap. Errors: ErrBadOptions for a
// negative rate or burst, or a Rate without Regulation.
func (s *Switch) AddPortWith(ch *channel.Channel, o AddPortOptions) (flow.PortID, error) {
	if o.Rate < 0 || o.Burst < 0 || o.RxRate < 0 || o.RxBurst < 0 {
		return 0, fmt.Errorf("%w: port rate %d, burst %d, receive rate %d, burst %d", ErrBadOptions, o.Rate, o.Burst, o.RxRate, o.RxBurst)
	}
	if (o.Rate > 0 || o.RxRate > 0) && s.reg == nil {
		return 0, fmt.Errorf("%w: a port rate needs Options.Regulation", ErrBadOptions)
	}
	var rb *regulate.TokenBucket
	if o.RxRate > 0 {
		burst := int64(o.RxBurst)
		if burst == 0 {
			burst = DefaultPortBurst
		}
		tb, err := regulate.NewTokenBucket(o.RxRate/8, burst, s.now())
		if err != nil {
			return 0, fmt.Errorf("%w: port receive rate: %w", ErrBadOptions, err)
		}
		rb = &tb
	}
	var b *pacer
	if o.Rate > 0 {
		burst := int64(o.Burst)
		if burst == 0 {
			burst = DefaultPortBurst
		}
		p, err := newPacer(o.Rate, burst, s.now())
		if err != nil {
			return 0, fmt.Errorf("%w: port rate: %w", ErrBadOptions, err)
		}
		b = &p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.addPort(ch)
	p := s.ports[id]
	p.reg.adv, p.reg.rate, p.reg.bucket = o.Advisories, o.Rate, b
	p.rx.rate, p.rx.bucket = o.RxRate, rb
	return id, nil
}
