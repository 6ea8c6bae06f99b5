-- The audit log is append-only (ray_app/audit/chain.py): every link is unique, and no role that is not
-- the table's owner can change or remove a row. The owner (or a superuser) could still disable the
-- triggers; what catches that is the HMAC key and the head checkpoint kept outside the database.
ALTER TABLE audit_log ADD CONSTRAINT audit_log_prev_hash_key UNIQUE (prev_hash);

CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
-- ALWAYS: they fire under session_replication_role = replica too.
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_no_update_delete;
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;

-- A serving role is granted SELECT and INSERT only; nobody gets UPDATE, DELETE or TRUNCATE by default.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
