PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE vdisk_extents (vdisk_extent_no INT, vdisk_id INT, part_id INT, part_extent_no INT);
COMMIT;
