package regulate

import "fmt"

// RoundRobin plans rounds of work over channels (docs/design.md §7 fairness): each
// round every channel with work gets a grant of up to Budget packets, in an
// order that rotates from round to round. When a round's total is smaller
// than the grants, it is split evenly and the remainder goes to the
// channels that got less last time, so over rounds every busy channel gets
// the same share to within one packet: a bursting channel is one channel
// among the others, however much it has waiting.
type RoundRobin struct {
	budget int // immutable
	cursor int // the channel the next round starts from
}

// Grant lets Channel take up to Budget packets this round.
type Grant struct {
	Channel int
	Budget  int
}

// NewRoundRobin returns a scheduler granting up to budget packets per
// channel per round (flowswitch.TxBatch suits TX sync).
func NewRoundRobin(budget int) (*RoundRobin, error) {
	if budget < 1 {
		return nil, fmt.Errorf("%w: round robin budget %d below 1", ErrInvalid, budget)
	}
	return &RoundRobin{budget: budget}, nil
}

// Round plans one round. ready[i] says channel i has work; total caps the
// packets of the whole round (0 or less: no cap). It writes the grants
// into out in service order and returns how many; channels that do not fit
// in out, or get no packet under the cap, come first next round. A grant is
// a ceiling: the caller serves out[0], out[1], ... in order and may stop
// early (a full device) — the rotation still moves on.
func (r *RoundRobin) Round(ready []bool, total int, out []Grant) int {
	n := len(ready)
	if n == 0 || len(out) == 0 {
		return 0
	}
	start := r.cursor % n
	k, truncated := 0, false
	for i := range n {
		ch := (start + i) % n
		if !ready[ch] {
			continue
		}
		if k == len(out) {
			truncated = true
			break
		}
		out[k] = Grant{Channel: ch}
		k++
	}
	if k == 0 {
		return 0
	}
	per, extra := r.budget, 0
	if total > 0 && total < k*r.budget {
		per, extra = total/k, total%k
	}
	m := 0
	for i := range k {
		b := per
		if i < extra {
			b++
		}
		if b == 0 {
			truncated = true // out of total: the rest go first next round
			break
		}
		out[i].Budget = b
		m++
	}
	switch {
	case truncated:
		r.cursor = out[m-1].Channel + 1
	case extra > 0:
		r.cursor = out[extra-1].Channel + 1 // those that got one more go last
	default:
		r.cursor = out[0].Channel + 1
	}
	return m
}
