-- The readers that migration 0019 replaced and that nothing calls any more: the service, the
-- tests and the bench read GET /api/analytics/mrr and ?as_of= through history_mrr_report_text and
-- history_analytics_text (0019), which compute the same answers. Kept, they were twins of those to
-- keep in step by hand. 0010's plain computations (history_mrr_report_plain,
-- history_analytics_inputs_plain) stay: 0019 calls them for source=base_tables.
DROP FUNCTION history_analytics_at(timestamptz, boolean);
DROP FUNCTION history_analytics_inputs(timestamptz);
DROP FUNCTION history_mrr_report(date, date);
