/// <reference path="../pb_data/types.d.ts" />
migrate((app) => {}, (app) => {});
