#!/usr/bin/env bash
# Installs the system packages vlmforge needs (tesseract for OCR, DejaVu fonts for sample data, Liberation
# fonts for the OCR accuracy test, Unicode CLDR for the language-ID test).
set -euo pipefail
missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] || missing+=(fonts-liberation)
# Unicode CLDR: the short-caption language-ID evaluation set (pipeline/filter/language_eval.py)
[ -f /usr/share/unicode/cldr/common/annotations/en.xml ] || missing+=(unicode-cldr-core)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "vlmforge needs these system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
