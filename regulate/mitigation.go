package regulate

import (
	"fmt"
	"time"
)

// Adaptive receive batching (docs/design.md §7 RX bursts), after Skywalk's netif
// mitigation: the packet rate is sampled every Sample, smoothed by an EWMA,
// and mapped through a table of levels to a hold time: how long the receive
// loop may wait for more packets before it delivers what it has. Quiet
// links deliver at once (level 0 holds 0); busy ones wait up to 1000 µs to
// fill larger batches, fewer wake-ups and notifications per packet. Each
// level has a low and a high mark with a gap between them, and the level
// moves at most one step per sample: the hysteresis that keeps it from
// flapping on a rate near a mark.

// MitigationLevel is one row of the table: Hold applies while the smoothed
// rate, in packets per sample, stays within [Down, Up]; above Up the next
// level applies, below Down the previous one.
type MitigationLevel struct {
	Hold     time.Duration
	Down, Up int64
}

// DefaultMitigationLevels returns the default table, in packets per 10 ms
// sample (a fresh copy: tables are not shared). The holds are ceilings:
// the loop delivers as soon as a batch is full, so at 1 Mpps a 32-packet
// batch waits 32 µs, not 1000. Level 0 holds nothing below 10 kpps, where
// waiting would add latency for no fuller batch. Each level's down mark
// lies well under the previous level's up mark (50 against 100, ...): the
// hysteresis.
func DefaultMitigationLevels() []MitigationLevel {
	return []MitigationLevel{
		{Hold: 0, Down: 0, Up: 100},                          // < 10 kpps: deliver at once
		{Hold: 100 * time.Microsecond, Down: 50, Up: 1000},   // ~10-100 kpps
		{Hold: 250 * time.Microsecond, Down: 500, Up: 3000},  // ~100-300 kpps
		{Hold: 500 * time.Microsecond, Down: 2000, Up: 6000}, // ~300-600 kpps
		{Hold: 1000 * time.Microsecond, Down: 4000, Up: 0},   // above: the most docs/design.md §7 allows
	}
}

// Mitigation bounds.
const (
	DefaultSample   = 10 * time.Millisecond
	DefaultEWMAStep = 2                       // each sample weighs 1/4: a step settles in ~8 samples (80 ms)
	MaxHold         = 1000 * time.Microsecond // docs/design.md §7: holds of 0 to 1000 µs
	ewmaFrac        = 8                       // fixed-point bits of the EWMA
	maxDecay        = 64                      // idle samples (640 ms by default) after which the rate is 0, whatever the weight
)

// MitigationOptions configure a Mitigation; zero fields take the defaults.
type MitigationOptions struct {
	Sample   time.Duration     // DefaultSample
	EWMAStep uint              // each sample weighs 2^-EWMAStep; DefaultEWMAStep
	Levels   []MitigationLevel // DefaultMitigationLevels(); copied
}

// Mitigation tracks one receive path's rate and the hold it calls for.
type Mitigation struct {
	sample int64 // ns; immutable
	step   uint  // immutable
	levels []MitigationLevel

	started bool
	start   int64 // ns: beginning of the current sample
	count   int64 // packets in the current sample
	ewma    int64 // packets per sample << ewmaFrac
	level   int
}

// NewMitigation returns a Mitigation at level 0.
func NewMitigation(opts MitigationOptions) (*Mitigation, error) {
	if opts.Sample == 0 {
		opts.Sample = DefaultSample
	}
	if opts.EWMAStep == 0 {
		opts.EWMAStep = DefaultEWMAStep
	}
	if opts.Levels == nil {
		opts.Levels = DefaultMitigationLevels()
	}
	switch {
	case opts.Sample < 0:
		return nil, fmt.Errorf("%w: mitigation sample %v below 0", ErrInvalid, opts.Sample)
	case opts.EWMAStep > 16:
		return nil, fmt.Errorf("%w: mitigation EWMA step %d above 16", ErrInvalid, opts.EWMAStep)
	case len(opts.Levels) == 0:
		return nil, fmt.Errorf("%w: mitigation needs at least one level", ErrInvalid)
	}
	for i, l := range opts.Levels {
		last := i == len(opts.Levels)-1
		switch {
		case l.Hold < 0 || l.Hold > MaxHold:
			return nil, fmt.Errorf("%w: mitigation level %d hold %v outside [0, %v]", ErrInvalid, i, l.Hold, MaxHold)
		case i > 0 && l.Hold < opts.Levels[i-1].Hold:
			return nil, fmt.Errorf("%w: mitigation level %d holds less than level %d", ErrInvalid, i, i-1)
		case !last && (l.Up <= l.Down || opts.Levels[i+1].Down >= l.Up || l.Up > 1<<40):
			return nil, fmt.Errorf("%w: mitigation level %d marks down %d, up %d: want down < up, next down < up", ErrInvalid, i, l.Down, l.Up)
		}
	}
	return &Mitigation{
		sample: int64(opts.Sample), step: opts.EWMAStep,
		levels: append([]MitigationLevel(nil), opts.Levels...),
	}, nil
}

// roll closes the samples that ended by now.
func (m *Mitigation) roll(now int64) {
	if !m.started {
		m.started, m.start = true, now
		return
	}
	d := now - m.start
	if d < m.sample {
		return // includes a clock that went back: the sample just goes on
	}
	k := d / m.sample
	m.push(m.count)
	for i := int64(1); i < k; i++ {
		if i == maxDecay {
			m.ewma, m.level = 0, 0
			break
		}
		m.push(0)
	}
	m.start += k * m.sample
	m.count = 0
}

// push folds one sample into the EWMA and moves the level by at most one.
func (m *Mitigation) push(pkts int64) {
	x := min(pkts, 1<<40) << ewmaFrac
	m.ewma += (x - m.ewma) >> m.step
	r := m.ewma >> ewmaFrac
	l := m.levels[m.level]
	switch {
	case m.level < len(m.levels)-1 && r > l.Up:
		m.level++
	case m.level > 0 && r < l.Down:
		m.level--
	}
}

// Count records n packets received at now.
func (m *Mitigation) Count(n int, now int64) {
	m.roll(now)
	if n > 0 {
		m.count += int64(n)
	}
}

// Hold returns how long, in ns, the receive loop may hold packets at now.
func (m *Mitigation) Hold(now int64) int64 {
	m.roll(now)
	return int64(m.levels[m.level].Hold)
}

// Level returns the current level (an index into the table).
func (m *Mitigation) Level() int { return m.level }

// Rate returns the smoothed rate in packets per second.
func (m *Mitigation) Rate() float64 {
	return float64(m.ewma) / (1 << ewmaFrac) * float64(time.Second) / float64(m.sample)
}

// Release reports whether the receive loop should deliver now: it holds
// pending packets, the oldest of which arrived at oldest (ns), and a full
// batch is batch packets. It delivers at once when the batch is full or
// the level holds nothing, else once the oldest has waited the hold.
func (m *Mitigation) Release(pending, batch int, oldest, now int64) bool {
	if pending <= 0 {
		return false
	}
	if pending >= batch {
		return true
	}
	h := m.Hold(now)
	return h == 0 || now-oldest >= h
}

// StallDetector tells when a channel is stalled (docs/design.md §7): packets wait
// in its RX ring and the app has not drained any for Timeout. The nexus
// then defuncts it (channel.ReasonStalled). The zero value is not usable:
// NewStallDetector.
type StallDetector struct {
	timeout  int64 // ns; immutable
	watching bool  // packets were waiting at the last Check
	since    int64 // ns: when they started waiting, or the app last drained some
	consumed uint64
}

// DefaultStallTimeout is 10 s (docs/design.md §7): far beyond any scheduling delay,
// short enough that a dead app's buffers come back soon.
const DefaultStallTimeout = 10 * time.Second

// NewStallDetector returns a detector with the timeout (0: the default).
func NewStallDetector(timeout time.Duration) (StallDetector, error) {
	if timeout == 0 {
		timeout = DefaultStallTimeout
	}
	if timeout < 0 {
		return StallDetector{}, fmt.Errorf("%w: stall timeout %v below 0", ErrInvalid, timeout)
	}
	return StallDetector{timeout: int64(timeout)}, nil
}

// Check records the channel's state at now and reports whether it is
// stalled: waiting is the packets in its RX ring not yet consumed, consumed
// is any counter that moves when the app drains it (the ring's consumer
// index). Call it periodically (the nexus's reaper tick): a stall is seen
// within Timeout plus one period.
func (s *StallDetector) Check(waiting int, consumed uint64, now int64) bool {
	if waiting <= 0 {
		s.watching, s.consumed = false, consumed
		return false
	}
	if !s.watching || consumed != s.consumed {
		s.watching, s.since, s.consumed = true, now, consumed
		return false
	}
	return now-s.since >= s.timeout
}
