-- Delivery leases decided inside PostgreSQL: one statement per request or release instead of a transaction
-- of five to seven round trips, which were a third of the database work of a delivered message. The rules
-- are store/leases.py's, unchanged; the advisory lock still serialises every decision across processes.

-- Take one of the domain's per_domain slots for the holder, or say why not: (granted, retry_at, global_cap).
-- A refused caller is remembered as a waiter (the domain's, or '' for the global cap).
CREATE FUNCTION tempost_lease_acquire(
    p_domain TEXT, p_holder TEXT, p_workflow TEXT, p_now TIMESTAMPTZ, p_cap INTEGER, p_ttl INTERVAL,
    p_per_domain INTEGER, p_min_interval INTERVAL, p_keep_global_wait BOOLEAN
) RETURNS TABLE (granted BOOLEAN, retry_at TIMESTAMPTZ, global_cap BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    own_slot INTEGER;
    busy INTEGER[];
    has_rows BOOLEAN;
    active BIGINT;
    allowed TIMESTAMPTZ;
    free_slot INTEGER;
BEGIN
    PERFORM pg_advisory_xact_lock(7314161);
    SELECT min(slot) FILTER (WHERE holder = p_holder),
           coalesce(array_agg(slot) FILTER (WHERE expires > p_now AND holder <> p_holder), '{}'),
           count(*) > 0,
           max(last_start)
      INTO own_slot, busy, has_rows, allowed
      FROM delivery_leases WHERE domain = p_domain;
    IF own_slot IS NULL AND cardinality(busy) >= p_per_domain THEN
        INSERT INTO delivery_waiters (workflow_id, domain, since) VALUES (p_workflow, p_domain, p_now)
            ON CONFLICT DO NOTHING;
        RETURN QUERY SELECT false, NULL::timestamptz, false;
        RETURN;
    END IF;
    SELECT count(*) INTO active FROM delivery_leases WHERE expires > p_now AND holder <> p_holder;
    IF active >= p_cap THEN
        INSERT INTO delivery_waiters (workflow_id, domain, since) VALUES (p_workflow, '', p_now)
            ON CONFLICT DO NOTHING;
        RETURN QUERY SELECT false, NULL::timestamptz, true;
        RETURN;
    END IF;
    IF own_slot IS NULL AND has_rows AND p_min_interval > interval '0' THEN
        allowed := allowed + p_min_interval;
        IF allowed > p_now THEN
            RETURN QUERY SELECT false, allowed, false;
            RETURN;
        END IF;
    END IF;
    IF own_slot IS NOT NULL THEN
        free_slot := own_slot;
    ELSE
        -- The lowest free slot, so a domain's rows stay few whatever its history.
        SELECT min(s) INTO free_slot
          FROM generate_series(0, p_per_domain + cardinality(busy) - 1) AS s
         WHERE NOT (s = ANY (busy));
    END IF;
    INSERT INTO delivery_leases (domain, slot, holder, expires, last_start)
        VALUES (p_domain, free_slot, p_holder, p_now + p_ttl, p_now)
        ON CONFLICT (domain, slot) DO UPDATE SET holder = excluded.holder, expires = excluded.expires,
            last_start = excluded.last_start;
    DELETE FROM delivery_waiters WHERE workflow_id = p_workflow AND domain IN (p_domain, '');
    IF p_keep_global_wait THEN
        INSERT INTO delivery_waiters (workflow_id, domain, since) VALUES (p_workflow, '', p_now)
            ON CONFLICT DO NOTHING;
    END IF;
    RETURN QUERY SELECT true, NULL::timestamptz, false;
END;
$$;

-- End the holder's lease and take the waiters to wake off the list: the domain's oldest, and the oldest
-- waiting for a global slot (''). No rows when the holder held nothing.
CREATE FUNCTION tempost_lease_release(p_domain TEXT, p_holder TEXT, p_now TIMESTAMPTZ)
RETURNS TABLE (workflow_id TEXT, domain TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    d TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(7314161);
    UPDATE delivery_leases l SET expires = p_now WHERE l.domain = p_domain AND l.holder = p_holder;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOREACH d IN ARRAY ARRAY[p_domain, ''] LOOP
        RETURN QUERY
            DELETE FROM delivery_waiters w WHERE (w.workflow_id, w.domain) IN
                (SELECT x.workflow_id, x.domain FROM delivery_waiters x
                  WHERE x.domain = d ORDER BY x.since LIMIT 1)
            RETURNING w.workflow_id, w.domain;
    END LOOP;
END;
$$;
