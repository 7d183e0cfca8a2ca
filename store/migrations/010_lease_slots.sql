-- A recipient domain may be given more than one delivery at a time ([queue.domain_concurrency]); each
-- concurrent delivery holds one numbered slot of its domain.
ALTER TABLE delivery_leases DROP CONSTRAINT delivery_leases_pkey;
ALTER TABLE delivery_leases ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE delivery_leases ADD PRIMARY KEY (domain, slot);
