package regulate

import "math"

// Jain returns Jain's fairness index of the allocations x:
// (Σx)² / (n·Σx²), from 1/n (one gets all) to 1 (all equal). All zeros
// count as equal (1). It is NaN for an empty x or any negative or NaN
// value, which have no fairness to speak of.
func Jain[T ~int | ~int64 | ~uint64 | ~float64](x []T) float64 {
	if len(x) == 0 {
		return math.NaN()
	}
	top := 0.0
	for _, v := range x {
		f := float64(v)
		if !(f >= 0) || math.IsInf(f, 0) {
			return math.NaN()
		}
		top = max(top, f)
	}
	if top == 0 {
		return 1
	}
	// Scaled by the largest value, so the squares cannot overflow.
	var sum, sq float64
	for _, v := range x {
		f := float64(v) / top
		sum += f
		sq += f * f
	}
	return sum * sum / (float64(len(x)) * sq)
}
