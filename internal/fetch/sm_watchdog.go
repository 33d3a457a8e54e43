package fetch

// The watchdog of one client call. A call holds a concurrency slot (SM.sem)
// and its client's lock until the client returns, and the SDK's calls can
// neither be cancelled nor do they time out by themselves (its reqwest client
// has no overall timeout: a connection that is accepted and never answered
// blocks the call indefinitely). Without a bound, MaxConcurrent such calls
// would stop every Secrets Manager tenant until a restart.

import (
	"sync/atomic"
	"time"
)

// States of an smWatch.
const (
	watchRunning   int32 = iota
	watchReturned        // the call returned before the limit
	watchAbandoned       // the limit passed first
)

// smWatch gives up one call after SM.callLimit. Exactly one of returned and
// the timer wins; the winner decides who frees the concurrency slot.
type smWatch struct {
	s     *SM
	e     *smEntry
	state atomic.Int32
	kept  bool // the abandoned call keeps its slot (too many hung); set before state
	limit time.Duration
	timer *time.Timer
}

// watch starts the watchdog of a call on e that holds a concurrency slot.
// The goroutine running the call must call returned when the call returns.
func (s *SM) watch(e *smEntry) *smWatch {
	w := &smWatch{s: s, e: e, limit: s.callLimit}
	w.timer = time.AfterFunc(w.limit, w.abandon)
	return w
}

// returned frees the call's slot, unless the watchdog freed it already.
func (w *smWatch) returned() {
	w.timer.Stop()
	if w.state.CompareAndSwap(watchRunning, watchReturned) {
		<-w.s.sem
		return
	}
	// Abandoned earlier: the hung call is over, and its client is closed
	// as soon as its last user leaves (smPool.release).
	if w.kept {
		<-w.s.sem
	}
	w.s.hung.Add(-1)
	w.s.log.Warn("sm: an abandoned upstream call returned; its client is closed", "client", w.s.clientKind)
}

// abandon runs when the limit passes. It releases the slot (unless too many
// abandoned calls still hang), takes the client out of the pool and wakes
// everyone waiting on it. The client itself is left alone: the call runs on.
func (w *smWatch) abandon() {
	s := w.s
	// Reserve a place among the hung calls before claiming the call, so
	// that the state change publishes kept to returned.
	n := s.hung.Add(1)
	w.kept = n > s.maxHung
	if !w.state.CompareAndSwap(watchRunning, watchAbandoned) {
		s.hung.Add(-1)
		return
	}
	s.stats.abandoned.Add(1)
	if !w.kept {
		<-s.sem
	}
	s.pool.poison(w.e)
	s.log.Error("sm: an upstream call did not return within the call limit; its client is replaced and closed when the call returns",
		"client", s.clientKind, "limit", w.limit, "slot_released", !w.kept, "hung_calls", n)
}
