BEGIN TRANSACTION;
CREATE TABLE vdisk_part ( part_id INT, partition VARCHAR, extent_size INT );
/* a table xendisk keeps, not the ancestor */
CREATE TABLE
  extents (device_id INT, idx INT, dirty INT);
COMMIT;
