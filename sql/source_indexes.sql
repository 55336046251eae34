-- Indexes okr-exporter's collector relies on in the Follow-Up application's
-- tables. Applied only on request (`okr-exporter migrate --create-source-indexes`)
-- or by a DBA running this file. Every statement is idempotent and built
-- CONCURRENTLY, so it never blocks the application's writes.
--
-- Each index turns one windowed OKR query into a range scan over the window
-- instead of a scan of the whole history (cost follows the window).

-- Drafts, adoption (created in window): range on created_at; the INCLUDE
-- columns answer the query from the index alone.
CREATE INDEX CONCURRENTLY IF NOT EXISTS okr_followups_created_at_idx
    ON followups (created_at) INCLUDE (creator_id, published_at, deleted_at);

-- Engagement, adoption (published in window): partial, so drafts cost
-- nothing; the INCLUDE columns let both read the window from the index
-- alone (the engagement breakdown dimensions and the adoption creator).
CREATE INDEX CONCURRENTLY IF NOT EXISTS okr_followups_published_at_idx
    ON followups (published_at)
    INCLUDE (id, creator_id, created_at, meeting_type, creator_region, company)
    WHERE published_at IS NOT NULL;

-- Mobile usage (sessions started in window, by device type).
CREATE INDEX CONCURRENTLY IF NOT EXISTS okr_analytics_sessions_started_at_idx
    ON analytics_sessions (started_at) INCLUDE (device_type);

-- Engagement (distinct visitors of each published follow-up): index-only
-- count(DISTINCT visitor_id) per follow-up.
CREATE INDEX CONCURRENTLY IF NOT EXISTS okr_analytics_sessions_followup_visitor_idx
    ON analytics_sessions (followup_id, visitor_id) INCLUDE (started_at);
