CREATE TABLE vdisks (id INT, size INT);
INSERT INTO vdisks VALUES (1, 2048);
