package regulate

import (
	"fmt"
	"math"
)

// TokenBucket caps a channel's rate (docs/design.md §7): Rate bytes per second on
// average, bursts of up to Burst bytes. Credit is kept in nanobytes (bytes
// × 1e9), so one nanosecond earns exactly Rate of them: no rounding, ever,
// and the answers are exact under a synthetic clock. A clock that goes
// backwards earns nothing. The zero value is not usable: NewTokenBucket.
type TokenBucket struct {
	rate   int64 // bytes per second = nanobytes per ns; immutable
	cap    int64 // Burst in nanobytes; immutable
	credit int64 // nanobytes, 0..cap
	last   int64 // ns of the last refill
}

// nano is nanobytes per byte (and ns per second).
const nano = 1_000_000_000

// MaxBurst is the largest burst: its credit in nanobytes fits an int64.
const MaxBurst = math.MaxInt64 / nano

// NewTokenBucket returns a bucket of rate bytes/s and burst bytes, full at
// now. rate and burst must be positive, burst at most MaxBurst.
func NewTokenBucket(rate, burst int64, now int64) (TokenBucket, error) {
	if rate < 1 || burst < 1 || burst > MaxBurst {
		return TokenBucket{}, fmt.Errorf("%w: token bucket rate %d B/s, burst %d B: want both >= 1, burst <= %d", ErrInvalid, rate, burst, int64(MaxBurst))
	}
	c := burst * nano
	return TokenBucket{rate: rate, cap: c, credit: c, last: now}, nil
}

func (t *TokenBucket) refill(now int64) {
	d := now - t.last
	if d <= 0 {
		return
	}
	t.last = now
	// Compare before multiplying: d*rate may overflow, room/rate cannot.
	if room := t.cap - t.credit; d >= room/t.rate+1 {
		t.credit = t.cap
	} else {
		t.credit += d * t.rate
	}
}

// Allow takes n bytes of credit at now if the bucket holds them and
// reports whether it did. n <= 0 costs nothing and is allowed.
func (t *TokenBucket) Allow(n int, now int64) bool {
	t.refill(now)
	if n <= 0 {
		return true
	}
	if int64(n) > t.cap/nano || int64(n)*nano > t.credit {
		return false
	}
	t.credit -= int64(n) * nano
	return true
}

// Wait returns how many ns after now Allow(n) will first succeed (0: now);
// ok is false when it never will (n above the burst). It takes no credit.
func (t *TokenBucket) Wait(n int, now int64) (wait int64, ok bool) {
	t.refill(now)
	if n <= 0 {
		return 0, true
	}
	if int64(n) > t.cap/nano {
		return 0, false
	}
	need := int64(n)*nano - t.credit
	if need <= 0 {
		return 0, true
	}
	return (need + t.rate - 1) / t.rate, true // ceiling: the first whole ns with enough
}

// Available returns the whole bytes of credit at now: a budget to size a
// transmit batch by.
func (t *TokenBucket) Available(now int64) int64 {
	t.refill(now)
	return t.credit / nano
}
