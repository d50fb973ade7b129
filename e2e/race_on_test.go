//go:build race

package e2e

// raceDetector: the tests run under the race detector, which makes the
// user-space stack several times slower (bounds that are about speed say
// how they allow for it).
const raceDetector = true

// raceDetectorInt is raceDetector as a number, for constants.
const raceDetectorInt = 1
