package main

import (
	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/server"
)

// smStats and bwStats read the counters of the backends in use (zero when
// the policy has none); a reload that replaces a backend restarts its
// counters, which Prometheus reads as a counter reset.
func smStats(sm func() *fetch.SM) fetch.SMStats {
	if s := sm(); s != nil {
		return s.Stats()
	}
	return fetch.SMStats{}
}

func bwStats(bw func() *bwcli.Backend) bwcli.Stats {
	if b := bw(); b != nil {
		return b.Stats()
	}
	return bwcli.Stats{}
}

func registerSMMetrics(m *server.Metrics, sm func() *fetch.SM) {
	m.CounterFunc("broker_sm_logins_total", "Secrets Manager access-token logins.", func() float64 { return float64(smStats(sm).Logins) })
	m.CounterFunc("broker_sm_upstream_requests_total", "Secrets Manager SDK calls that can reach the upstream.", func() float64 { return float64(smStats(sm).Requests) })
	m.CounterFunc("broker_sm_retries_total", "Secrets Manager calls retried after 429, 5xx or a connection error.", func() float64 { return float64(smStats(sm).Retries) })
	m.GaugeFunc("broker_sm_live_clients", "Live Secrets Manager SDK clients.", func() float64 { return float64(smStats(sm).LiveClients) })
	m.CounterFunc("broker_sm_client_evictions_total", "SDK clients closed because the client pool was full.", func() float64 { return float64(smStats(sm).Evictions) })
	m.CounterFunc("broker_sm_calls_abandoned_total", "Secrets Manager calls given up after the call limit; their clients were replaced.", func() float64 { return float64(smStats(sm).Abandoned) })
}

func registerBWMetrics(m *server.Metrics, bw func() *bwcli.Backend) {
	m.CounterFunc("broker_bw_logins_total", "bw login --apikey runs.", func() float64 { return float64(bwStats(bw).Logins) })
	m.CounterFunc("broker_bw_processes_total", "bw processes started.", func() float64 { return float64(bwStats(bw).Processes) })
	m.CounterFunc("broker_bw_calls_total", "Fallback calls (unlock, sync, list, lock).", func() float64 { return float64(bwStats(bw).Calls) })
	m.CounterFunc("broker_bw_vaults_left_unlocked_total", "Vaults found unlocked after a lock; must stay 0.", func() float64 { return float64(bwStats(bw).UnlockedAfterLock) })
	m.CounterFunc("broker_bw_serve_restarts_total", "bw serve processes restarted after dying.", func() float64 { return float64(bwStats(bw).ServeRestarts) })
}
