-- Attempts counted when a worker starts an image, claims counted when it leases one. Keep in
-- step with migrations/postgres/0010_claims.sql.
--
-- `attempts` used to be raised by the claim, so a worker that died charged an attempt to every
-- image it had leased, started or not. Now the claim raises `claims`, and `attempts` is raised
-- (with `started` set) once the worker records that it started the image: a dead worker costs
-- an attempt only to the images it was working on. `claims` has a cap of its own, so an image
-- that brings its worker down before its start is recorded still ends. `expiries` counts the
-- leases of the image that expired (its worker died or hung): the next worker records such an
-- image's start before it runs it, so an image that brings its worker down is charged the
-- attempt, while an unstarted image of a dead worker is not.
ALTER TABLE images ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN started INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN expiries INTEGER NOT NULL DEFAULT 0;
