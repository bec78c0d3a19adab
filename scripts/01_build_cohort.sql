-- MIMIC-IV (v2.x) -> an ICU in-hospital-mortality cohort and its first-hours observations.
--
-- Runs in DuckDB. It reads the schemas `hosp` and `icu`, which must hold the distributed tables
-- (or views over them): hosp.patients, hosp.admissions, hosp.labevents, icu.icustays,
-- icu.chartevents, icu.outputevents. backdoor_study.data.mimiciv.attach_tables creates those views
-- over the CSV(.gz) or Parquet files of a local MIMIC-IV copy; scripts/00_to_parquet.py runs this
-- file and converts the result to the canonical Parquet layout (docs/data_mimiciv.md).
--
-- Parameters: DuckDB variables (SET VARIABLE name = value;), default when unset:
--   min_age        18     adults only: age at admission = anchor_age + year(admittime) - anchor_year
--   min_los_hours  48     the ICU stay lasts at least this long (outtime - intime)
--   n_hours        48     observation window [intime, intime + n_hours) on an hourly grid
--   all_stays      false  false: the first ICU stay of each hospital admission only
--
-- Output tables (temporary, in the current connection):
--   itemid_map    the itemid -> variable mapping below, in one place
--   cohort        one row per included stay: stay_id, subject_id, hadm_id, age, gender,
--                 admission_type, first_careunit, label (1 = in-hospital death), intime, window_end
--   observations  long format, one row per measurement in the window: stay_id, subject_id,
--                 charttime, hour (0 .. n_hours-1), variable, value (in the units of
--                 backdoor_study/data/variables.py; plausible-range cleaning and hourly
--                 aggregation happen in Python, where the ranges live)
--   cohort_flow   how many stays each inclusion step kept
--
-- Variables must be names from backdoor_study/data/variables.py; the conversion refuses others.

CREATE OR REPLACE TEMP TABLE params AS
SELECT
    COALESCE(getvariable('min_age'), 18)::INTEGER AS min_age,
    COALESCE(getvariable('min_los_hours'), 48)::DOUBLE AS min_los_hours,
    COALESCE(getvariable('n_hours'), 48)::INTEGER AS n_hours,
    COALESCE(getvariable('all_stays'), false)::BOOLEAN AS all_stays;

-- The mapping. source_table: where the itemid lives. transform: how the charted number becomes a
-- value in our unit. combine: 'none' (each row is a measurement), 'sum_components' (the rows of
-- one variable at one charttime are summed, all components required: GCS), 'sum_hour' (summed per
-- hour of the window: urine output in mL per hour).
CREATE OR REPLACE TEMP TABLE itemid_map AS
WITH mapping (source_table, itemid, variable, label, source_unit, transform, combine) AS (
    VALUES
    -- vital signs (icu.chartevents)
    ('chartevents', 220045, 'HR',        'Heart Rate',                                'bpm',         'identity',              'none'),
    ('chartevents', 220050, 'SysABP',    'Arterial Blood Pressure systolic',          'mmHg',        'identity',              'none'),
    ('chartevents', 220051, 'DiasABP',   'Arterial Blood Pressure diastolic',         'mmHg',        'identity',              'none'),
    ('chartevents', 220052, 'MAP',       'Arterial Blood Pressure mean',              'mmHg',        'identity',              'none'),
    ('chartevents', 220179, 'NISysABP',  'Non Invasive Blood Pressure systolic',      'mmHg',        'identity',              'none'),
    ('chartevents', 220180, 'NIDiasABP', 'Non Invasive Blood Pressure diastolic',     'mmHg',        'identity',              'none'),
    ('chartevents', 220181, 'NIMAP',     'Non Invasive Blood Pressure mean',          'mmHg',        'identity',              'none'),
    ('chartevents', 220210, 'RespRate',  'Respiratory Rate',                          'insp/min',    'identity',              'none'),
    ('chartevents', 223762, 'Temp',      'Temperature Celsius',                       '°C',          'identity',              'none'),
    ('chartevents', 223761, 'Temp',      'Temperature Fahrenheit',                    '°F',          'fahrenheit_to_celsius', 'none'),
    -- SaO2 is arterial saturation (blood gas), as in PhysioNet 2012; pulse oximetry (SpO2,
    -- 220277) is a different, hourly measurement with no variable of its own yet.
    ('chartevents', 220227, 'SaO2',      'Arterial O2 Saturation',                    '%',           'identity',              'none'),
    ('labevents',   50817,  'SaO2',      'Oxygen Saturation (Blood Gas)',             '%',           'identity',              'none'),
    ('chartevents', 220739, 'GCS',       'GCS - Eye Opening',                         'points',      'identity',              'sum_components'),
    ('chartevents', 223900, 'GCS',       'GCS - Verbal Response',                     'points',      'identity',              'sum_components'),
    ('chartevents', 223901, 'GCS',       'GCS - Motor Response',                      'points',      'identity',              'sum_components'),
    ('chartevents', 223835, 'FiO2',      'Inspired O2 Fraction',                      '% or fraction', 'percent_to_fraction', 'none'),
    -- text item (valuenum is empty): a charted ventilator mode marks mechanical ventilation
    ('chartevents', 223849, 'MechVent',  'Ventilator Mode',                           'text',        'presence',              'none'),
    ('chartevents', 226512, 'Weight',    'Admission Weight (Kg)',                     'kg',          'identity',              'none'),
    ('chartevents', 224639, 'Weight',    'Daily Weight',                              'kg',          'identity',              'none'),
    -- urine output (icu.outputevents), as in mimic-code's urine_output concept: GU irrigant
    -- volume in counts as negative, so irrigant out minus irrigant in is the urine
    ('outputevents', 226559, 'Urine',    'Foley',                                     'mL',          'identity',              'sum_hour'),
    ('outputevents', 226560, 'Urine',    'Void',                                      'mL',          'identity',              'sum_hour'),
    ('outputevents', 226561, 'Urine',    'Condom Cath',                               'mL',          'identity',              'sum_hour'),
    ('outputevents', 226584, 'Urine',    'Ileoconduit',                               'mL',          'identity',              'sum_hour'),
    ('outputevents', 226563, 'Urine',    'Suprapubic',                                'mL',          'identity',              'sum_hour'),
    ('outputevents', 226564, 'Urine',    'R Nephrostomy',                             'mL',          'identity',              'sum_hour'),
    ('outputevents', 226565, 'Urine',    'L Nephrostomy',                             'mL',          'identity',              'sum_hour'),
    ('outputevents', 226567, 'Urine',    'Straight Cath',                             'mL',          'identity',              'sum_hour'),
    ('outputevents', 226557, 'Urine',    'R Ureteral Stent',                          'mL',          'identity',              'sum_hour'),
    ('outputevents', 226558, 'Urine',    'L Ureteral Stent',                          'mL',          'identity',              'sum_hour'),
    ('outputevents', 227488, 'Urine',    'GU Irrigant Volume In',                     'mL',          'negate',                'sum_hour'),
    ('outputevents', 227489, 'Urine',    'GU Irrigant/Urine Volume Out',              'mL',          'identity',              'sum_hour'),
    -- laboratory values (hosp.labevents)
    ('labevents',   50813,  'Lactate',   'Lactate',                                   'mmol/L',      'identity',              'none'),
    ('labevents',   50912,  'Creatinine','Creatinine',                                'mg/dL',       'identity',              'none'),
    ('labevents',   51006,  'BUN',       'Urea Nitrogen',                             'mg/dL',       'identity',              'none'),
    ('labevents',   50931,  'Glucose',   'Glucose',                                   'mg/dL',       'identity',              'none'),
    ('labevents',   50971,  'K',         'Potassium',                                 'mEq/L',       'identity',              'none'),
    ('labevents',   50983,  'Na',        'Sodium',                                    'mEq/L',       'identity',              'none'),
    ('labevents',   50882,  'HCO3',      'Bicarbonate',                               'mEq/L',       'identity',              'none'),
    ('labevents',   51221,  'HCT',       'Hematocrit',                                '%',           'identity',              'none'),
    ('labevents',   51301,  'WBC',       'White Blood Cells',                         'K/uL',        'identity',              'none'),
    ('labevents',   51265,  'Platelets', 'Platelet Count',                            'K/uL',        'identity',              'none'),
    ('labevents',   50820,  'pH',        'pH (Blood Gas)',                            'units',       'identity',              'none'),
    ('labevents',   50818,  'PaCO2',     'pCO2 (Blood Gas)',                          'mm Hg',       'identity',              'none'),
    ('labevents',   50821,  'PaO2',      'pO2 (Blood Gas)',                           'mm Hg',       'identity',              'none'),
    -- MIMIC reports magnesium in mg/dL and it is kept so, which matches the numbers in the
    -- PhysioNet 2012 files (mean about 2.0) whatever their documentation says
    ('labevents',   50960,  'Mg',        'Magnesium',                                 'mg/dL',       'identity',              'none'),
    ('labevents',   50885,  'Bilirubin', 'Bilirubin, Total',                          'mg/dL',       'identity',              'none'),
    ('labevents',   50862,  'Albumin',   'Albumin',                                   'g/dL',        'identity',              'none'),
    ('labevents',   50863,  'ALP',       'Alkaline Phosphatase',                      'IU/L',        'identity',              'none'),
    ('labevents',   50861,  'ALT',       'Alanine Aminotransferase (ALT)',            'IU/L',        'identity',              'none'),
    ('labevents',   50878,  'AST',       'Asparate Aminotransferase (AST)',           'IU/L',        'identity',              'none'),
    ('labevents',   50907,  'Cholesterol', 'Cholesterol, Total',                      'mg/dL',       'identity',              'none'),
    ('labevents',   51003,  'TroponinT', 'Troponin T',                                'ng/mL',       'identity',              'none')
)
SELECT source_table, itemid::INTEGER AS itemid, variable, label, source_unit, transform, combine
FROM mapping;

-- Every ICU stay with what the inclusion criteria need.
CREATE OR REPLACE TEMP TABLE stay_candidates AS
WITH stays AS (
    SELECT
        s.stay_id::BIGINT AS stay_id,
        s.subject_id::BIGINT AS subject_id,
        s.hadm_id::BIGINT AS hadm_id,
        s.first_careunit,
        CAST(s.intime AS TIMESTAMP) AS intime,
        CAST(s.outtime AS TIMESTAMP) AS outtime
    FROM icu.icustays AS s
)
SELECT
    s.*,
    p.gender,
    a.admission_type,
    a.hospital_expire_flag::INTEGER AS label,
    p.anchor_age::INTEGER + (year(CAST(a.admittime AS TIMESTAMP)) - p.anchor_year::INTEGER) AS age,
    epoch(s.outtime - s.intime) / 3600.0 AS los_hours,
    row_number() OVER (PARTITION BY s.hadm_id ORDER BY s.intime, s.stay_id) AS stay_rank
FROM stays AS s
JOIN hosp.admissions AS a ON a.hadm_id::BIGINT = s.hadm_id AND a.subject_id::BIGINT = s.subject_id
JOIN hosp.patients AS p ON p.subject_id::BIGINT = s.subject_id;

CREATE OR REPLACE TEMP TABLE cohort AS
SELECT
    c.stay_id, c.subject_id, c.hadm_id, c.age, c.gender, c.admission_type, c.first_careunit,
    c.label, c.intime,
    least(c.outtime, c.intime + to_hours(p.n_hours)) AS window_end
FROM stay_candidates AS c, params AS p
WHERE (p.all_stays OR c.stay_rank = 1)
  AND c.age >= p.min_age
  AND c.los_hours >= p.min_los_hours
  AND c.label IS NOT NULL
ORDER BY c.stay_id;

CREATE OR REPLACE TEMP TABLE cohort_flow AS
SELECT * FROM (VALUES
    (1, 'ICU stays with an admission and a patient', (SELECT count(*) FROM stay_candidates)),
    (2, 'first ICU stay of the admission (unless all_stays)',
        (SELECT count(*) FROM stay_candidates, params WHERE all_stays OR stay_rank = 1)),
    (3, 'adult (age >= min_age)',
        (SELECT count(*) FROM stay_candidates, params
         WHERE (all_stays OR stay_rank = 1) AND age >= min_age)),
    (4, 'ICU stay >= min_los_hours',
        (SELECT count(*) FROM stay_candidates, params
         WHERE (all_stays OR stay_rank = 1) AND age >= min_age AND los_hours >= min_los_hours)),
    (5, 'known outcome (cohort)', (SELECT count(*) FROM cohort))
) AS f(step, criterion, n_stays);

-- Mapped events in each stay's window, with the value in our unit.
CREATE OR REPLACE TEMP TABLE mapped_events AS
WITH raw AS (
    SELECT ce.stay_id::BIGINT AS stay_id, CAST(ce.charttime AS TIMESTAMP) AS charttime,
           ce.itemid::INTEGER AS itemid, TRY_CAST(ce.valuenum AS DOUBLE) AS valuenum,
           'chartevents' AS source_table
    FROM icu.chartevents AS ce
    WHERE ce.itemid::INTEGER IN (SELECT itemid FROM itemid_map WHERE source_table = 'chartevents')
      AND ce.stay_id::BIGINT IN (SELECT stay_id FROM cohort)
    UNION ALL
    -- outputevents has `value`, not `valuenum`
    SELECT oe.stay_id::BIGINT, CAST(oe.charttime AS TIMESTAMP), oe.itemid::INTEGER,
           TRY_CAST(oe.value AS DOUBLE), 'outputevents'
    FROM icu.outputevents AS oe
    WHERE oe.itemid::INTEGER IN (SELECT itemid FROM itemid_map WHERE source_table = 'outputevents')
      AND oe.stay_id::BIGINT IN (SELECT stay_id FROM cohort)
    UNION ALL
    -- labevents has no stay_id (and hadm_id may be empty): a lab belongs to the stay whose
    -- window holds its charttime
    SELECT c.stay_id, CAST(le.charttime AS TIMESTAMP), le.itemid::INTEGER,
           TRY_CAST(le.valuenum AS DOUBLE), 'labevents'
    FROM hosp.labevents AS le
    JOIN cohort AS c
      ON le.subject_id::BIGINT = c.subject_id
     AND CAST(le.charttime AS TIMESTAMP) >= c.intime
     AND CAST(le.charttime AS TIMESTAMP) < c.window_end
    WHERE le.itemid::INTEGER IN (SELECT itemid FROM itemid_map WHERE source_table = 'labevents')
)
SELECT
    r.stay_id, c.subject_id, r.charttime, r.itemid, m.variable, m.combine,
    CAST(floor(epoch(r.charttime - c.intime) / 3600) AS INTEGER) AS hour,
    CASE m.transform
        WHEN 'identity' THEN r.valuenum
        WHEN 'fahrenheit_to_celsius' THEN (r.valuenum - 32.0) * 5.0 / 9.0
        WHEN 'percent_to_fraction' THEN CASE WHEN r.valuenum > 1.0 THEN r.valuenum / 100.0
                                             ELSE r.valuenum END
        WHEN 'negate' THEN -abs(r.valuenum)
        WHEN 'presence' THEN 1.0
    END AS value
FROM raw AS r
JOIN itemid_map AS m ON m.source_table = r.source_table AND m.itemid = r.itemid
JOIN cohort AS c ON c.stay_id = r.stay_id
WHERE r.charttime >= c.intime AND r.charttime < c.window_end
  AND (r.valuenum IS NOT NULL OR m.transform = 'presence');

CREATE OR REPLACE TEMP TABLE observations AS
WITH components AS (
    SELECT variable, count(*) AS n_components
    FROM itemid_map
    WHERE combine = 'sum_components'
    GROUP BY variable
),
component_values AS (
    -- one value per component and charttime (a component charted twice counts once)
    SELECT stay_id, subject_id, charttime, hour, variable, itemid, max(value) AS value
    FROM mapped_events
    WHERE combine = 'sum_components'
    GROUP BY stay_id, subject_id, charttime, hour, variable, itemid
)
SELECT stay_id, subject_id, charttime, hour, variable, value
FROM mapped_events
WHERE combine = 'none'
UNION ALL
-- one total per charttime at which every component was charted (GCS: eye + verbal + motor)
SELECT v.stay_id, v.subject_id, v.charttime, v.hour, v.variable, sum(v.value)
FROM component_values AS v
JOIN components AS k ON k.variable = v.variable
GROUP BY v.stay_id, v.subject_id, v.charttime, v.hour, v.variable, k.n_components
HAVING count(*) = k.n_components
UNION ALL
-- one total per hour, stamped with the hour's last charttime (urine output)
SELECT stay_id, subject_id, max(charttime), hour, variable, sum(value)
FROM mapped_events
WHERE combine = 'sum_hour'
GROUP BY stay_id, subject_id, hour, variable
ORDER BY stay_id, hour, variable, charttime;
