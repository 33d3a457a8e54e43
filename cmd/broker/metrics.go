package main

import (
	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/server"
)

func registerSMMetrics(m *server.Metrics, sm *fetch.SM) {
	m.CounterFunc("broker_sm_logins_total", "Secrets Manager access-token logins.", func() float64 { return float64(sm.Stats().Logins) })
	m.CounterFunc("broker_sm_upstream_requests_total", "Secrets Manager SDK calls that can reach the upstream.", func() float64 { return float64(sm.Stats().Requests) })
	m.CounterFunc("broker_sm_retries_total", "Secrets Manager calls retried after 429, 5xx or a connection error.", func() float64 { return float64(sm.Stats().Retries) })
	m.GaugeFunc("broker_sm_live_clients", "Live Secrets Manager SDK clients.", func() float64 { return float64(sm.Stats().LiveClients) })
	m.CounterFunc("broker_sm_client_evictions_total", "SDK clients closed because the client pool was full.", func() float64 { return float64(sm.Stats().Evictions) })
}

func registerBWMetrics(m *server.Metrics, bw *bwcli.Backend) {
	m.CounterFunc("broker_bw_logins_total", "bw login --apikey runs.", func() float64 { return float64(bw.Stats().Logins) })
	m.CounterFunc("broker_bw_processes_total", "bw processes started.", func() float64 { return float64(bw.Stats().Processes) })
	m.CounterFunc("broker_bw_calls_total", "Fallback calls (unlock, sync, list, lock).", func() float64 { return float64(bw.Stats().Calls) })
	m.CounterFunc("broker_bw_vaults_left_unlocked_total", "Vaults found unlocked after a lock; must stay 0.", func() float64 { return float64(bw.Stats().UnlockedAfterLock) })
	m.CounterFunc("broker_bw_serve_restarts_total", "bw serve processes restarted after dying.", func() float64 { return float64(bw.Stats().ServeRestarts) })
}
