package regulate

import (
	"fmt"
	"time"
)

// Flow advisories (docs/design.md §7). A flow whose sender can be paused (a channel
// flow with an entry in its port's advisory table) is regulated by asking
// it to pause, not by dropping its packets:
//
//   - SUSPEND when the flow's oldest packet has waited at least Target for
//     at least Interval (a standing queue, CoDel's own criterion), or when
//     the flow overwhelms the queue: SuspendBacklog packets, or its fair
//     share of a queue filled past HighWater.
//   - RESUME once the flow has drained to ResumeBacklog packets, or to half
//     its backlog when suspended if that is less. Not "and its delay is
//     under Target": a suspended flow's newest packet only ages, so its
//     delay would fall under Target only once empty, and the link would
//     idle while the app reacts to the resume.
//
// The gap between the marks (space: a suspended flow always drains to at
// most half) and the fresh Interval a delay must last after each resume
// (time) are the hysteresis: a flow cannot flap faster than its queue
// drains or an interval passes.

// AdvisoryRef names a flow's entry in a channel's advisory table: the port
// (channel) and the index in its table (flow.Entry.AdvisoryIndex).
type AdvisoryRef struct {
	Port  uint32
	Index uint32
}

// Transition is an advisory change for the nexus to publish: write
// Suspended into the table entry Ref names (channel.SetAdvisory posts the
// event).
type Transition struct {
	Ref       AdvisoryRef
	Suspended bool
}

// AdvisoryPolicy decides when a flow is held back and let go again: the
// Queue suspends a flow with an advisory, and drops the arrivals of one
// without (early drop). The zero value of a field means its default; Resolve (or New,
// for Options.Advisory) fills them in.
type AdvisoryPolicy struct {
	// Target and Interval: a delay at or above Target lasting Interval
	// suspends (the Queue's CoDel values by default).
	Target, Interval time.Duration
	// SuspendBacklog packets queued suspend the flow at once. Default
	// Limit/4: four such flows fill the queue.
	SuspendBacklog int
	// ResumeBacklog is the low mark: a suspended flow resumes at or below
	// it (or half its backlog when suspended, if less). Default Limit/32
	// (64 packets ≈ 97 KB at 1514 B): enough to keep the link busy while
	// the app learns of the resume (0.8 ms at 1 Gbit/s).
	ResumeBacklog int
	// HighWater: when the whole queue holds at least this many packets, a
	// flow holding at least its fair share (queue length / active flows)
	// and more than ResumeBacklog is suspended. Default 3/4 of Limit,
	// leaving a quarter for what senders have in flight.
	HighWater int
	// MinBytes: a delay counts only while the flow holds more than this
	// many bytes (RFC 8289's MAXPACKET guard: one packet waiting is not a
	// standing queue). Default one maximum frame.
	MinBytes int
}

// Resolve returns p with the defaults for a queue of limit packets and
// frames of maxFrame bytes filled in, after checking the fields. Observe
// and Suspend need a resolved policy (New resolves Options.Advisory).
func (p AdvisoryPolicy) Resolve(limit, maxFrame int) (AdvisoryPolicy, error) {
	return p.withDefaults(DefaultTarget, DefaultInterval, limit, maxFrame)
}

func (p AdvisoryPolicy) withDefaults(target, interval time.Duration, limit, maxFrame int) (AdvisoryPolicy, error) {
	if p.Target == 0 {
		p.Target = target
	}
	if p.Interval == 0 {
		p.Interval = interval
	}
	setDefault(&p.SuspendBacklog, max(limit/4, 2))
	setDefault(&p.ResumeBacklog, max(limit/32, 1))
	setDefault(&p.HighWater, max(limit*3/4, 1))
	setDefault(&p.MinBytes, maxFrame)
	switch {
	case p.Target <= 0 || p.Interval <= 0:
		return p, fmt.Errorf("%w: advisory target %v, interval %v: want both > 0", ErrInvalid, p.Target, p.Interval)
	case p.ResumeBacklog < 0 || p.ResumeBacklog >= p.SuspendBacklog:
		return p, fmt.Errorf("%w: advisory marks resume %d, suspend %d: want 0 <= resume < suspend", ErrInvalid, p.ResumeBacklog, p.SuspendBacklog)
	case p.HighWater < 1 || p.MinBytes < 0:
		return p, fmt.Errorf("%w: advisory high water %d, min bytes %d", ErrInvalid, p.HighWater, p.MinBytes)
	}
	return p, nil
}

// Observation is what the policy sees of one flow at one instant.
type Observation struct {
	Now     int64 // ns
	Delay   int64 // ns the flow's oldest queued packet has waited; 0 if none
	Packets int   // the flow's backlog
	Bytes   int
	// QueueLen and ActiveFlows describe the whole queue: its packets, and
	// the flows holding at least one.
	QueueLen, ActiveFlows int
}

// AdvisoryState is one flow's advisory state. The zero value is a running
// flow with no history.
type AdvisoryState struct {
	suspended  bool
	aboveSet   bool  // the delay has been at or above Target since aboveSince
	aboveSince int64 // ns
	resumeAt   int   // while suspended: the backlog at or under which it resumes
}

// Suspended reports whether the flow is suspended.
func (s *AdvisoryState) Suspended() bool { return s.suspended }

// Observe updates s with o and reports whether the flow changed state (see
// Suspended for the new one).
func (p *AdvisoryPolicy) Observe(s *AdvisoryState, o Observation) bool {
	above := o.Delay >= int64(p.Target) && o.Bytes > p.MinBytes
	switch {
	case !above:
		s.aboveSet = false
	case !s.aboveSet:
		s.aboveSet, s.aboveSince = true, o.Now
	}
	if s.suspended {
		if o.Packets <= s.resumeAt {
			s.suspended = false
			s.aboveSet = false // re-suspending by delay takes a fresh interval
			return true
		}
		return false
	}
	standing := s.aboveSet && o.Now-s.aboveSince >= int64(p.Interval)
	overwhelms := o.Packets >= p.SuspendBacklog ||
		(o.QueueLen >= p.HighWater && o.Packets > p.ResumeBacklog &&
			o.ActiveFlows > 0 && o.Packets >= o.QueueLen/o.ActiveFlows)
	if standing || overwhelms {
		return p.Suspend(s, o.Packets)
	}
	return false
}

// Suspend suspends a flow holding packets whatever its observations (the
// queue overflowed and dropped from it) and reports whether that is a
// change.
func (p *AdvisoryPolicy) Suspend(s *AdvisoryState, packets int) bool {
	if s.suspended {
		return false
	}
	s.suspended = true
	s.resumeAt = min(p.ResumeBacklog, packets/2)
	return true
}
