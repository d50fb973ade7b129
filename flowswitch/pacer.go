package flowswitch

import (
	"fmt"

	"github.com/skylane/skylane/regulate"
)

// pacer is a regulate.TokenBucket that may run into debt: a batch of
// frames whose sizes are known only once dequeued is charged whole, and
// what the bucket could not cover is paid back before it lends again. The
// overshoot is at most one batch (one frame when credit is short, see
// regFlush).
type pacer struct {
	tb    regulate.TokenBucket
	burst int64
	debt  int64 // bytes
}

// newPacer returns a pacer of rate bits/s and burst bytes, full at now.
func newPacer(rate, burst, now int64) (pacer, error) {
	bps := rate / 8
	if bps < 1 {
		return pacer{}, fmt.Errorf("rate %d bit/s is below one byte per second", rate)
	}
	tb, err := regulate.NewTokenBucket(bps, burst, now)
	if err != nil {
		return pacer{}, err
	}
	return pacer{tb: tb, burst: burst}, nil
}

// credit pays what debt it can and returns the bytes available now;
// zero or less means wait.
func (p *pacer) credit(now int64) int64 {
	a := p.tb.Available(now)
	if p.debt > 0 {
		pay := min(a, p.debt)
		p.tb.Allow(int(pay), now)
		p.debt -= pay
		a -= pay
		if p.debt > 0 {
			return -p.debt
		}
	}
	return a
}

// charge takes n bytes, running into debt for what the bucket lacks.
func (p *pacer) charge(n int, now int64) {
	if p.tb.Allow(n, now) {
		return
	}
	a := p.tb.Available(now)
	p.tb.Allow(int(a), now)
	p.debt += int64(n) - a
}

// wait returns the ns until credit turns positive.
func (p *pacer) wait(now int64) int64 {
	need := min(p.debt+1, p.burst)
	w, ok := p.tb.Wait(int(need), now)
	if !ok {
		return int64(idleWait) // unreachable: need is within the burst
	}
	return w
}
