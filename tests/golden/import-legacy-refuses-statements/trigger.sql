BEGIN TRANSACTION;
CREATE TABLE vdisk_part ( part_id INT, partition VARCHAR, extent_size INT );
CREATE TRIGGER grab AFTER INSERT ON vdisk_part BEGIN DELETE FROM vdisk_part; END;
COMMIT;
